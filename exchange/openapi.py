"""The served OpenAPI document: litestar's generated schema, completed into the contract.

Handlers decode their raw body themselves (`exchange.http.decode_body`, after the
signature check), so litestar never sees a body type, and its error responses are its own
default 400. Each handler therefore declares what litestar cannot see, next to its route:

    @post("/earn", status_code=201, opt=api(body=schemas.EarnCreate, errors=(InsufficientPoints,)))

`api()` puts an `Api` record in the handler's `opt`. Once per process, `document(app)`
walks the routes and, for every handler in the schema, fills in:

- `requestBody` from `Api.body` (a msgspec struct: its JSON Schema, an example);
- `responses`: the success responses (`Api.responses`, else litestar's own), and one
  `application/problem+json` response per error status with the `code`s it can carry,
  from `Api.errors` plus what the handler's authentication and body decoding imply;
- `security` from the handler's authentication dependency (`partner`, `admin`/`staff`,
  `member`, `caller`, `reader`): `partnerSignature`, `operatorBearer`, `memberBearer`;
- path and query parameter patterns and limits from `PARAMETERS` (the id shapes of
  `exchange.ids`), and the `Signature`, `Signature-Input`, `Content-Digest` and
  `Idempotency-Key` headers.

A handler without `opt=api(...)` is refused at start-up (`document` raises), so a new
endpoint cannot be served undocumented. The same bytes are committed as
`docs/openapi.json` (a test keeps them identical; `EXCHANGE_UPDATE_OPENAPI=1 pytest
tests/http/test_openapi.py` rewrites the file).
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar import Litestar, Request
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.routes import HTTPRoute

from exchange.errors import (
    BadRequest,
    ExchangeError,
    Forbidden,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    PartnerSuspended,
    PartnerTerminated,
    PayloadTooLarge,
    RateLimited,
    RequestInProgress,
    ServiceUnavailable,
    Unauthorized,
    Unprocessable,
    UnsupportedMediaType,
)
from exchange.ids import KEY_ID_SHAPE, MEMBER_ID_PATTERN, PARTNER_ID_SHAPE, RUN_ID_SHAPE
from exchange.problems import PROBLEM_JSON, Problem

__all__ = ["PARAMETERS", "Api", "ContractRenderPlugin", "api", "document", "render"]

OPTION = "openapi"

# The signature failures a partner call can meet (contract §2.1), in the order checked.
_SIGNATURE_CODES = (
    "signature_missing",
    "signature_invalid",
    "signature_expired",
    "signature_insufficient",
    "key_unknown",
    "key_revoked",
    "digest_mismatch",
    "nonce_replayed",
)


@dataclass(frozen=True)
class Api:
    """What a handler's signature does not tell litestar (see the module docstring)."""

    body: type | None = None
    errors: tuple[type[ExchangeError], ...] = ()
    responses: Mapping[int, Any] = field(default_factory=dict)
    media_types: tuple[str, ...] = ()  # extra success media types (e.g. text/csv)
    example: Any = None
    idempotent: bool = False  # an operator POST that needs an Idempotency-Key
    # Security schemes when the caller dependency does not say (None: anonymous allowed).
    security: tuple[str | None, ...] = ()
    # False for the one handler that never touches the database (liveness): every other
    # may answer 503 while PostgreSQL is away, busy or holding a row it needs.
    database: bool = True


def api(
    *,
    body: type | None = None,
    errors: Iterable[type[ExchangeError]] = (),
    responses: Mapping[int, Any] | None = None,
    media_types: Iterable[str] = (),
    example: Any = None,
    idempotent: bool = False,
    security: Iterable[str | None] = (),
    database: bool = True,
) -> dict[str, Any]:
    """The `opt=` of a route handler: `@post(..., opt=api(body=EarnCreate, errors=(...)))`."""
    return {
        OPTION: Api(
            body,
            tuple(errors),
            dict(responses or {}),
            tuple(media_types),
            example,
            idempotent,
            tuple(security),
            database,
        )
    }


def _pattern(shape: str) -> str:
    """A Python `fullmatch` shape (or an `\\A...\\Z` pattern) as an ECMA-262 pattern."""
    return "^" + shape.removeprefix("\\A").removesuffix("\\Z") + "$"


# Path and query parameters by name: the shapes the exchange mints (exchange.ids).
PARAMETERS: dict[str, dict[str, Any]] = {
    "member_id": {"type": "string", "pattern": _pattern(MEMBER_ID_PATTERN)},
    "hold_id": {"type": "string", "pattern": "^hold_[0-9a-f]{32}$"},
    "transaction_id": {"type": "string", "pattern": "^txn_[0-9a-f]{32}$"},
    "partner_id": {"type": "string", "pattern": _pattern(PARTNER_ID_SHAPE.pattern)},
    "key_id": {"type": "string", "pattern": _pattern(KEY_ID_SHAPE.pattern)},
    "run_id": {"type": "string", "pattern": _pattern(RUN_ID_SHAPE.pattern)},
    "after": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,200}$"},
    "reference": {"type": "string", "minLength": 1, "maxLength": 128},
}

SECURITY_SCHEMES: dict[str, Any] = {
    "partnerSignature": {
        "type": "apiKey",
        "in": "header",
        "name": "Signature",
        "description": (
            "An RFC 9421 HTTP message signature, profile coalition-v1 (contract §2.1; "
            "docs/partners.md): one Ed25519 signature labelled in `Signature-Input` with "
            '`created`, `keyid`, `nonce` (16-128 chars) and `tag="coalition-v1"`, covering '
            "`@method @authority @path @query`, with a body also `content-type "
            "content-digest` (RFC 9530 sha-256 of the exact body bytes), on POST also "
            "`idempotency-key`. `created` within the last 300 s (30 s of clock skew "
            "ahead); each nonce is accepted once. The signature is verified before the "
            "body is read, so a request with a bad signature is 401 whatever its body."
        ),
    },
    "operatorBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An operator token (`exchange tokens create --role admin|finance`).",
    },
    "memberBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "A member token from POST /v1/members/{member_id}/sessions.",
    },
}

_SIGNATURE_HEADERS = (
    ("Signature-Input", "The RFC 9421 signature parameters (label `sig1`)."),
    ("Content-Digest", "sha-256 of the exact body bytes (RFC 9530); also for an empty body."),
)
_IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "description": "1-255 printable ASCII characters; a retry with the same key and body "
    "replays the first answer (header `Idempotency-Replayed: true`).",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
}


def _auth(handler: HTTPRouteHandler) -> tuple[list[dict[str, list[str]]], list[Any]]:
    """The security requirement and the errors implied by the handler's caller dependency."""
    names = set(handler.resolve_dependencies())
    post = "POST" in handler.http_methods
    partner: list[Any] = [
        *[(Unauthorized.status, code) for code in _SIGNATURE_CODES],
        PartnerSuspended,
        PartnerTerminated,
        RateLimited,
    ]
    if post:
        partner += [IdempotencyKeyMissing, RequestInProgress, IdempotencyKeyReused]
    # The caller dependency a handler names, first match wins: (schemes, errors).
    callers: tuple[tuple[str, tuple[str, ...], list[Any]], ...] = (
        ("caller", ("partnerSignature", "memberBearer"), [*partner, Unauthorized]),
        ("reader", ("partnerSignature", "operatorBearer"), [*partner, Unauthorized]),
        ("partner", ("partnerSignature",), partner),
        ("admin", ("operatorBearer",), [Unauthorized, Forbidden]),  # finance tokens: 403
        ("staff", ("operatorBearer",), [Unauthorized]),  # admin or finance: every role
        ("member", ("memberBearer",), [Unauthorized]),
    )
    for name, schemes, errors in callers:
        if name in names:
            return [{scheme: []} for scheme in schemes], errors
    return [], []


def _codes(errors: Iterable[Any]) -> dict[int, list[str]]:
    """{status: sorted codes}, from error classes or (status, code) pairs."""
    found: dict[int, set[str]] = {}
    for error in errors:
        status, code = error if isinstance(error, tuple) else (error.status, error.code)
        found.setdefault(status, set()).add(code)
    return {status: sorted(codes) for status, codes in sorted(found.items())}


_RETRY_AFTER = {
    "description": "Seconds to wait before trying again.",
    "schema": {"type": "integer", "minimum": 0},
}


def _problem_response(status: int, codes: list[str]) -> dict[str, Any]:
    schema = {
        "allOf": [
            {"$ref": "#/components/schemas/Problem"},
            {"properties": {"status": {"const": status}, "code": {"enum": codes}}},
        ]
    }
    listed = ", ".join(f"`{code}`" for code in codes)
    response: dict[str, Any] = {
        "description": f"A problem (RFC 9457) with code {listed}.",
        "content": {PROBLEM_JSON: {"schema": schema}},
    }
    if status == ServiceUnavailable.status:
        response["description"] += (
            " The database is away or busy, or another session holds a row this request "
            "needs: nothing was changed; retry after `Retry-After` seconds (a POST with the "
            "same Idempotency-Key)."
        )
    if status in (RateLimited.status, ServiceUnavailable.status):
        response["headers"] = {"Retry-After": _RETRY_AFTER}
    return response


Refs = list[tuple[Any, dict[str, Any]]]


def _ref(kind: Any, refs: Refs) -> dict[str, Any]:
    """A placeholder for the schema of `kind`, filled by `_fill` once every type is known
    (msgspec names the components, qualifying two structs that share a name)."""
    if isinstance(kind, dict):  # a schema written out: a shape no one struct describes
        return kind
    holder: dict[str, Any] = {}
    refs.append((kind, holder))
    return holder


def _fill(refs: Refs) -> dict[str, Any]:
    kinds = [Problem, *(kind for kind, _ in refs)]
    found, components = msgspec.json.schema_components(
        kinds, ref_template="#/components/schemas/{name}"
    )
    for (_, holder), schema in zip(refs, found[1:], strict=True):
        holder.update(schema)
    for component in components.values():
        _clean_description(component)
    problem_ref = found[0]["$ref"].rsplit("/", 1)[1]
    if problem_ref != "Problem":  # pragma: no cover - a second struct named Problem
        raise RuntimeError(f"the Problem schema is named {problem_ref}")
    return components


def _clean_description(component: dict[str, Any]) -> None:
    """A struct's docstring as its description, with the source's indentation removed.
    msgspec 0.23 does this itself; 0.22 and earlier kept the indentation of every line but
    the first. Either way the document (and docs/openapi.json) is the same."""
    description = component.get("description")
    if isinstance(description, str):
        component["description"] = inspect.cleandoc(description)


def _success(operation: dict[str, Any], spec: Api, refs: Refs) -> dict[str, dict[str, Any]]:
    """The documented success responses: the handler's own, else litestar's."""
    if not spec.responses:
        kept = {k: v for k, v in operation.get("responses", {}).items() if k.startswith("2")}
    else:
        kept = {}
        for status, kind in sorted(spec.responses.items()):
            response: dict[str, Any] = {"description": _STATUS_TEXT.get(status, "Success")}
            if kind is not None:
                response["content"] = {"application/json": {"schema": _ref(kind, refs)}}
            kept[str(status)] = response
    for media in spec.media_types:
        for response in kept.values():
            response.setdefault("content", {})[media] = {"schema": {"type": "string"}}
    return kept


_STATUS_TEXT = {200: "OK", 201: "Created", 202: "Accepted", 204: "No content"}


def _parameters(operation: dict[str, Any], handler: HTTPRouteHandler, spec: Api) -> None:
    parameters = operation.get("parameters", [])
    for parameter in parameters:
        shape = PARAMETERS.get(parameter["name"])
        typed = parameter.get("schema", {}).get("type")
        # A shape is for strings (ids, cursors); an integer offset keeps its own schema.
        if shape is not None and parameter["in"] in ("path", "query") and typed != "integer":
            parameter["schema"] = {**parameter.get("schema", {}), **shape}
            parameter["schema"].pop("oneOf", None)
    auth = set(handler.resolve_dependencies())
    if "partner" in auth or "reader" in auth or "caller" in auth:
        for name, text in _SIGNATURE_HEADERS:
            parameters.append(
                {
                    "name": name,
                    "in": "header",
                    "required": False,
                    "description": text,
                    "schema": {"type": "string"},
                }
            )
    if spec.idempotent or ("partner" in auth and "POST" in handler.http_methods):
        parameters.append(dict(_IDEMPOTENCY_HEADER))
    if parameters:
        operation["parameters"] = parameters


def _complete(operation: dict[str, Any], handler: HTTPRouteHandler, spec: Api, refs: Refs) -> None:
    security, auth_errors = _auth(handler)
    errors: list[Any] = [*auth_errors, *spec.errors]
    if spec.body is not None:
        operation["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": _ref(spec.body, refs)}},
        }
        if spec.example is not None:
            operation["requestBody"]["content"]["application/json"]["example"] = spec.example
        errors += [BadRequest, PayloadTooLarge, UnsupportedMediaType, Unprocessable]
    if any(p.get("in") == "query" for p in operation.get("parameters", [])):
        errors.append(Unprocessable)
    if spec.idempotent:
        errors += [IdempotencyKeyMissing, RequestInProgress, IdempotencyKeyReused]
    if spec.database:
        errors.append(ServiceUnavailable)
    responses = _success(operation, spec, refs)
    for status, codes in _codes(errors).items():
        responses[str(status)] = _problem_response(status, codes)
    operation["responses"] = responses
    if spec.security:
        security = [{} if name is None else {name: []} for name in spec.security]
    if security:
        operation["security"] = security
    _parameters(operation, handler, spec)


def _handlers(app: Litestar) -> Iterable[tuple[str, str, HTTPRouteHandler]]:
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if handler.resolve_include_in_schema():
                for method in sorted(handler.http_methods):
                    yield route.path_format, method.lower(), handler


def document(app: Litestar) -> dict[str, Any]:
    """The complete OpenAPI document of `app`; raises if a handler lacks `opt=api(...)`."""
    schema = copy.deepcopy(app.openapi_schema.to_schema())
    refs: Refs = []
    missing = []
    for path, method, handler in _handlers(app):
        operation = schema["paths"].get(path, {}).get(method)
        if operation is None:
            continue
        spec = handler.opt.get(OPTION)
        if not isinstance(spec, Api):
            missing.append(f"{method.upper()} {path}")
            continue
        _complete(operation, handler, spec, refs)
    if missing:
        raise RuntimeError(f"handlers without opt=api(...): {', '.join(missing)}")
    components = schema.setdefault("components", {})
    generated = _fill(refs)
    schemas = {**components.get("schemas", {}), **generated}
    components["schemas"] = dict(sorted(_referenced(schema["paths"], schemas).items()))
    components["securitySchemes"] = SECURITY_SCHEMES
    return schema


_REF = re.compile(r'"#/components/schemas/([^"]+)"')


def _referenced(paths: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """The components the operations reach: litestar's own versions of the structs that
    msgspec now describes are left out, so a generator sees each model once."""
    found: set[str] = set()
    pending = set(_REF.findall(msgspec.json.encode(paths).decode()))
    while pending:
        name = pending.pop()
        if name not in found and name in schemas:
            found.add(name)
            pending |= set(_REF.findall(msgspec.json.encode(schemas[name]).decode()))
    return {name: schemas[name] for name in found}


def render(app: Litestar) -> bytes:
    """The document's bytes as served and as committed in docs/openapi.json."""
    return msgspec.json.format(msgspec.json.encode(document(app)), indent=2) + b"\n"


class ContractRenderPlugin(JsonRenderPlugin):
    """Serves `render(app)` at /schema/openapi.json, built once per process."""

    def __init__(self) -> None:
        super().__init__()
        self._rendered: bytes | None = None

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        if self._rendered is None:
            self._rendered = render(request.app)
        return self._rendered
