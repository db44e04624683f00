"""Signing: the profile's headers for a request (`sign_request`), or exactly the given
components (`sign_components`).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from http_message_signatures import HTTPMessageSigner, MappingKeyResolver
from http_message_signatures.algorithms import ED25519

from partners.signing._base import ComponentResolver, SignedMessage
from partners.signing._data import (
    BODY_COMPONENTS,
    POST_COMPONENTS,
    REQUIRED_COMPONENTS,
    SIGNATURE_TAG,
)
from partners.signing._keys import content_digest

__all__ = ["sign_components", "sign_request"]


# --- signing --------------------------------------------------------------------------------


def sign_components(
    *,
    method: str,
    authority: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    components: Sequence[str],
    key_id: str,
    private_key: Ed25519PrivateKey,
    created: int,
    nonce: str | None,
    tag: str | None = SIGNATURE_TAG,
    label: str = "sig1",
) -> dict[str, str]:
    """`Signature-Input` and `Signature` for exactly the given components and parameters.

    The low-level signer (`sign_request` chooses the profile's components). Parameters are
    written in the order created, keyid, nonce, tag; no `alg`. `path`/`query` are the raw
    wire spelling; `headers` must hold every covered header.
    """
    fields = {name.lower(): value for name, value in headers.items()}
    signer = HTTPMessageSigner(
        signature_algorithm=ED25519,
        key_resolver=MappingKeyResolver(public_keys={}, private_keys={key_id: private_key}),
        component_resolver_class=ComponentResolver,
    )
    message = SignedMessage(method, authority, path, query, fields)
    signer.sign(
        message,
        key_id=key_id,
        created=datetime.fromtimestamp(created, UTC),
        nonce=nonce,
        label=label,
        tag=tag,
        include_alg=False,
        covered_component_ids=tuple(components),
        use_existing_digest="content-digest" in fields,
    )
    return {"Signature-Input": fields["Signature-Input"], "Signature": fields["Signature"]}


def sign_request(
    *,
    method: str,
    url: str | httpx.URL,
    headers: Mapping[str, str],
    body: bytes | None,
    key_id: str,
    private_key: Ed25519PrivateKey,
    created: int | None = None,
    nonce: str | None = None,
    label: str = "sig1",
) -> dict[str, str]:
    """The headers to add to a request so the exchange accepts it.

    Returns Content-Digest (sha-256; only when `body` is non-empty) plus Signature-Input
    and Signature covering `@method @authority @path @query`, `content-type
    content-digest` with a body, and `idempotency-key` when that header is present.
    `@path`/`@query` are taken from the URL's raw (percent-encoded) form, exactly as httpx
    puts it on the wire. `created` defaults to now, `nonce` to 32 random url-safe chars.
    Raises ValueError when a body has no Content-Type or a POST has no Idempotency-Key.
    """
    wire = httpx.URL(url)
    path, _, query = wire.raw_path.decode("ascii").partition("?")
    fields = {name.lower(): value for name, value in headers.items()}
    components = list(REQUIRED_COMPONENTS)
    added: dict[str, str] = {}
    if body:
        if "content-type" not in fields:
            raise ValueError("a request with a body needs a Content-Type header")
        added["Content-Digest"] = fields["content-digest"] = content_digest(body)
        components += BODY_COMPONENTS
    if "idempotency-key" in fields:
        components += POST_COMPONENTS
    elif method.upper() == "POST":
        raise ValueError("every POST to the exchange needs an Idempotency-Key header")
    added |= sign_components(
        method=method.upper(),
        authority=wire.netloc.decode("ascii").lower(),
        path=path,
        query=query,
        headers=fields,
        components=components,
        key_id=key_id,
        private_key=private_key,
        created=int(datetime.now(UTC).timestamp()) if created is None else created,
        nonce=secrets.token_urlsafe(24) if nonce is None else nonce,
        label=label,
    )
    return added
