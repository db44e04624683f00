"""schemathesis against a live `exchange serve`: every operation of the served document,
with requests generated from it, signed like a partner's (partners.signing, the signer of
PartnerClient) or carrying an operator or member bearer token.

Checks per response: no 5xx, the status is documented, the content type and the body
conform to the document (schemathesis' own checks). Then: every status the document lists
for an operation was seen for it, across the generated requests and a short scripted
session of real calls (`_script`), except the ones `UNREACHED` names with their reason.

The run is bounded for CI on two shared cores: `EXAMPLES` per operation (default 12,
`EXCHANGE_FUZZ_EXAMPLES` raises it) and one Hypothesis database-free pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core import NOT_SET

from partners.signing import generate_keypair, load_private_key, sign_request
from tests.integration.test_cli import EXCHANGE, _env, _free_port, _wait_ready

EXAMPLES = int(os.environ.get("EXCHANGE_FUZZ_EXAMPLES", "12"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Generated credentials are replaced by real ones.
_CREDENTIALS = {"signature", "signature-input", "content-digest", "authorization"}


@dataclass
class Live:
    base_url: str
    admin: str
    finance: str
    member_token: str
    key_id: str
    private_key: str
    ids: dict[str, str]
    seen: dict[tuple[str, str], set[int]] = field(default_factory=dict)

    def send(
        self,
        method: str,
        path: str,
        auth: str,
        *,
        body: Any = NOT_SET,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        template: str | None = None,
    ) -> httpx.Response:
        """One request, authenticated as `auth` (partner, operator, finance, member, none),
        its status recorded under (method, template)."""
        wanted = {k: v for k, v in (headers or {}).items() if k.lower() not in _CREDENTIALS}
        content = None if body is NOT_SET else json.dumps(body).encode()
        if content is not None:
            wanted.setdefault("Content-Type", "application/json")
        if method == "POST" and auth == "partner":
            wanted.setdefault("Idempotency-Key", f"fuzz-{time.monotonic_ns()}")
        if auth in ("operator", "finance", "member"):
            token = {"operator": self.admin, "finance": self.finance}.get(auth, self.member_token)
            wanted["Authorization"] = f"Bearer {token}"
        with httpx.Client(base_url=self.base_url, timeout=30) as http:
            request = http.build_request(
                method, path, content=content, params=params, headers=wanted
            )
            if auth == "partner":
                request.headers.update(
                    sign_request(
                        method=request.method,
                        url=request.url,
                        headers=request.headers,
                        body=content,
                        key_id=self.key_id,
                        private_key=load_private_key(self.private_key),
                    )
                )
            response = http.send(request)
        self.seen.setdefault((method.lower(), template or path), set()).add(response.status_code)
        return response


def _partner(live_url: str, admin: dict[str, str], partner_id: str) -> tuple[str, str]:
    body = {
        "partner_id": partner_id,
        "name": partner_id.title(),
        "settlement_currency": "EUR",
        "issue_price": "0.012",
        "redemption_value": "0.010",
        "earn_rates": {"EUR": "1"},
    }
    httpx.post(f"{live_url}/v1/admin/partners", json=body, headers=admin).raise_for_status()
    private_key, public_key = generate_keypair()
    key = httpx.post(
        f"{live_url}/v1/admin/partners/{partner_id}/keys", json={"public_key": public_key},
        headers=admin,
    )  # fmt: skip
    key.raise_for_status()
    return key.json()["key_id"], private_key


def _token(env: dict[str, str], role: str, name: str) -> str:
    return subprocess.run(
        [*EXCHANGE, "tokens", "create", "--role", role, "--name", name], env=env,
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    data_dir, port = tmp_path_factory.mktemp("openapi") / "data", _free_port()
    env = _env(EXCHANGE_DATA_DIR=str(data_dir), EXCHANGE_PARTNER_RATE_LIMIT="10000/second")
    process = subprocess.Popen(
        [*EXCHANGE, "serve", "--port", str(port)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_ready(port, process, timeout_s=60)
        base_url = f"http://127.0.0.1:{port}"
        admin, finance = _token(env, "admin", "ada"), _token(env, "finance", "finn")
        key_id, private_key = _partner(base_url, {"Authorization": f"Bearer {admin}"}, "grocer")
        live = Live(base_url, admin, finance, "", key_id, private_key, {"partner_id": "grocer"})
        _seed(live)
        yield live
    finally:
        process.terminate()
        process.wait(timeout=30)


def _seed(live: Live) -> None:
    """Real ids for the generated requests to hit: a member with points, a hold, a
    transaction, a member token and a settlement run."""
    member = live.send("POST", "/v1/members", "partner", body={"reference": "fuzz-1"}).json()
    member_id = member["member_id"]
    earn = {"member_id": member_id, "points": 1_000_000, "reference": "seed"}
    live.ids["transaction_id"] = live.send("POST", "/v1/earn", "partner", body=earn).json()[
        "transaction_id"
    ]
    hold = {"member_id": member_id, "points": 10, "reference": "seed-hold"}
    live.ids["hold_id"] = live.send("POST", "/v1/holds", "partner", body=hold).json()["hold_id"]
    session = live.send("POST", f"/v1/members/{member_id}/sessions", "partner", body={}).json()
    live.member_token = session["token"]
    live.ids["member_id"] = member_id
    time.sleep(1.1)  # a period_end on a whole second after every posting
    period_end = datetime.now(UTC).replace(microsecond=0).isoformat()
    run = live.send("POST", "/v1/admin/settlements", "operator", body={"period_end": period_end})
    live.ids["run_id"] = run.json()["run_id"]
    live.seen.clear()


def _auth_of(operation: dict[str, Any]) -> str:
    schemes = [name for requirement in operation.get("security", []) for name in requirement]
    if "partnerSignature" in schemes:
        return "partner"
    if "operatorBearer" in schemes:
        return "operator"
    return "member" if "memberBearer" in schemes else "none"


def _with_real_ids(live: Live, case: Any, flip: bool) -> None:
    """Every other case, the ids it names are the seeded ones, so the generated requests
    reach the handlers' success paths as well as their 404s."""
    if not flip:
        return
    for name in list(case.path_parameters or {}):
        if name in live.ids:
            case.path_parameters[name] = live.ids[name]
    if isinstance(case.body, dict) and "member_id" in case.body:
        case.body["member_id"] = live.ids["member_id"]


def _fuzz(live: Live, operation: Any, auth: str, failures: list[str]) -> None:
    """`EXAMPLES` generated requests to one operation, each checked against the document."""
    counter = iter(range(10**6))

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
        phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        _with_real_ids(live, case, next(counter) % 2 == 0)
        kwargs = case.as_transport_kwargs(base_url=live.base_url)
        path = kwargs["url"].removeprefix(live.base_url)
        response = live.send(
            case.method, path, auth, body=case.body, params=kwargs.get("params"),
            headers=kwargs.get("headers"), template=case.path,
        )  # fmt: skip
        try:
            case.validate_response(response, checks=CHECKS)
        except Exception as exc:
            failures.append(f"{case.method} {path} -> {response.status_code}: {exc}")

    run()


@pytest.fixture(scope="module")
def fuzzed(live: Live) -> list[str]:
    """Run schemathesis over every operation; the failures found, as text."""
    doc = httpx.get(f"{live.base_url}/schema/openapi.json").json()
    schema = schemathesis.openapi.from_dict(doc)
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        _fuzz(live, operation, _auth_of(doc["paths"][operation.path][operation.method]), failures)
    return failures


def test_generated_requests_get_no_5xx_and_documented_responses(fuzzed: list[str]) -> None:
    assert not fuzzed, "\n".join(fuzzed[:20])
