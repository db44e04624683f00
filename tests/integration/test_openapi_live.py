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
from schemathesis.core.result import Ok

from partners.signing import generate_keypair, load_private_key, sign_request
from tests.servers import EXCHANGE, free_port, server_env, wait_ready

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
    suspended: tuple[str, str] = ("", "")  # a suspended partner's key id and private key
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
        content: bytes | None = None,
        key: tuple[str, str] | None = None,
    ) -> httpx.Response:
        """One request, authenticated as `auth` (partner, operator, finance, member, none),
        its status recorded under (method, template)."""
        wanted = {k: v for k, v in (headers or {}).items() if k.lower() not in _CREDENTIALS}
        if body is not NOT_SET:
            content = json.dumps(body).encode()
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
                signer = key or (self.key_id, self.private_key)
                request.headers.update(
                    sign_request(
                        method=request.method,
                        url=request.url,
                        headers=request.headers,
                        body=content,
                        key_id=signer[0],
                        private_key=load_private_key(signer[1]),
                    )
                )
            response = http.send(request)
        self.seen.setdefault((method.lower(), template or path), set()).add(response.status_code)
        return response


def _onboard(live: Live, partner_id: str) -> tuple[str, str]:
    """A partner onboarded through the operator API, with a fresh key: (key id, private key)."""
    body = {
        "partner_id": partner_id,
        "name": partner_id.title(),
        "settlement_currency": "EUR",
        "issue_price": "0.012",
        "redemption_value": "0.010",
        "earn_rates": {"EUR": "1"},
    }
    assert live.send("POST", "/v1/admin/partners", "operator", body=body).status_code == 201
    private_key, public_key = generate_keypair()
    key = live.send(
        "POST", f"/v1/admin/partners/{partner_id}/keys", "operator",
        body={"public_key": public_key}, template="/v1/admin/partners/{partner_id}/keys",
    )  # fmt: skip
    assert key.status_code == 201, key.text
    return key.json()["key_id"], private_key


def _token(env: dict[str, str], role: str, name: str) -> str:
    return subprocess.run(
        [*EXCHANGE, "tokens", "create", "--role", role, "--name", name], env=env,
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    data_dir, port = tmp_path_factory.mktemp("openapi") / "data", free_port()
    env = server_env(EXCHANGE_DATA_DIR=str(data_dir), EXCHANGE_PARTNER_RATE_LIMIT="10000/second")
    process = subprocess.Popen(
        [*EXCHANGE, "serve", "--port", str(port)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_ready(port, process, timeout_s=60)
        base_url = f"http://127.0.0.1:{port}"
        admin, finance = _token(env, "admin", "ada"), _token(env, "finance", "finn")
        live = Live(base_url, admin, finance, "", "", "", {})
        live.key_id, live.private_key = _onboard(live, "grocer")
        live.suspended = _onboard(live, "paused")
        paused = live.send("PATCH", "/v1/admin/partners/paused", "operator",
                           body={"status": "suspended"})  # fmt: skip
        assert paused.status_code == 200, paused.text
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
    # Ids only the probes use (401/403 come before any lookup).
    # The operator calls generated get a partner of their own: they may well suspend or
    # terminate it, or revoke its key.
    target_key, _ = _onboard(live, "target")
    live.ids |= {"partner_id": "target", "key_id": target_key}
    live.ids |= {"document_ref": "doc_0", "adjustment_id": "adj_0"}
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
        assert isinstance(result, Ok), f"schemathesis cannot read an operation: {result}"
        operation = result.ok()
        _fuzz(live, operation, _auth_of(doc["paths"][operation.path][operation.method]), failures)
    return failures


def test_generated_requests_get_no_5xx_and_documented_responses(fuzzed: list[str]) -> None:
    assert not fuzzed, "\n".join(fuzzed[:20])


# Statuses the document lists that neither the generated requests nor the script reach
# against one live server, with where they are proved instead. The test below fails if
# one of them becomes reached (shrink the list) or a new documented status is not.
_RACE = "409 request_in_progress needs two concurrent requests with one Idempotency-Key "
_RACE += "(tests/http/test_gateway_api.py, tests/http/test_finance_api.py)"
_LIMIT = "429: the fuzzing server's rate limit is raised (tests/http/test_gateway_api.py)"
_PARTNER_POSTS = [
    "/v1/burn", "/v1/earn", "/v1/members", "/v1/holds", "/v1/holds/{hold_id}/capture",
    "/v1/holds/{hold_id}/void", "/v1/transactions/{transaction_id}/reversals",
    "/v1/members/{member_id}/sessions",
]  # fmt: skip
_PARTNER_GETS = [
    "/v1/holds/{hold_id}", "/v1/transactions/{transaction_id}", "/v1/transactions",
    "/v1/members/{member_id}/balance", "/v1/settlements/{run_id}/statement",
    "/v1/documents/{document_ref}", "/v1/webhook", "/v1/webhook/deliveries",
]  # fmt: skip
_RETRY = "/v1/webhook/deliveries/{event_id}/retry"
# 503 on every operation but liveness needs the database away, stalled or a row held:
# tests/faults/test_outages.py, tests/http/test_foundation.py, tests/http/test_locked_rows.py.
_AWAY = "503 needs the database away or a row held (tests/faults, tests/http/test_locked_rows.py)"
UNREACHED: dict[tuple[str, str, int], str] = {
    ("post", "/v1/adjustments/{adjustment_id}/approval", 409): "an adjustment that expired "
    "unapproved, days later (tests/http/test_close_api.py, frozen clock)",
    ("get", "/metrics", 401): "loopback callers need no token (tests/http/test_metrics.py)",
    ("post", "/v1/payments", 409): _RACE,
    ("post", "/v1/adjustments", 409): _RACE,
    ("post", "/v1/settlements/{run_id}/approval", 409): "an unreconciled run "
    "(tests/http/test_finance_api.py)",
    **{("post", path, 409): _RACE for path in _PARTNER_POSTS if "/holds/" not in path},
    **{("post", path, 429): _LIMIT for path in _PARTNER_POSTS},
    **{("get", path, 429): _LIMIT for path in _PARTNER_GETS},
    ("put", "/v1/webhook", 429): _LIMIT,
    ("delete", "/v1/webhook", 429): _LIMIT,
    ("post", _RETRY, 429): _LIMIT,
    ("post", _RETRY, 409): _RACE,
}


# Operations merged after this script was written. The fuzz test above covers them (no 5xx,
# conforming responses); the statuses the script does not reach yet are proven through the
# API by their own tests. Driving them from _script is the open work.
COVERED_ELSEWHERE = {
    "/v1/batches": "tests/http/test_batches.py",
    "/v1/members/{member_id}/transfers": "tests/http/test_members_api.py",
    "/v1/members/{member_id}/export": "tests/http/test_members_api.py",
    "/v1/admin/members/{member_id}": "tests/http/test_members_api.py",
}


def _concrete(live: Live, path: str) -> str:
    for name, value in live.ids.items():
        path = path.replace("{" + name + "}", value)
    return path


def _probe(live: Live, method: str, path: str, operation: dict[str, Any]) -> None:
    """The statuses every operation of its kind can answer: no credentials (401), a
    suspended partner or a finance token on an admin call (403), a body that is not JSON
    (400), of another media type (415) or too large (413)."""
    documented = set(operation["responses"])
    url, verb, auth = _concrete(live, path), method.upper(), _auth_of(operation)
    if "401" in documented:
        live.send(verb, url, "none", template=path, content=b"{}", headers=_json_headers())
    if "403" in documented and auth == "partner":
        live.send(verb, url, "partner", template=path, key=live.suspended)
    elif "403" in documented:
        live.send(verb, url, "finance", template=path, content=b"{}", headers=_json_headers())
    if "requestBody" in operation:
        for content, media in ((b"{", "application/json"), (b"{}", "text/plain"),
                               (b" " * 70_000, "application/json")):  # fmt: skip
            headers = _json_headers() | {"Content-Type": media}
            live.send(verb, url, auth, template=path, content=content, headers=headers)


def _json_headers() -> dict[str, str]:
    return {"Content-Type": "application/json", "Idempotency-Key": f"k-{time.monotonic_ns()}"}


def _script(live: Live) -> None:
    """Real calls for the success and domain-error statuses generated data seldom hits."""
    op, fin = "operator", "finance"
    # A member of its own: the generated calls may have left the seeded one negative.
    enrolled = live.send("POST", "/v1/members", "partner", body={"reference": "script"})
    member_id = enrolled.json()["member_id"]
    earn = {"member_id": member_id, "points": 500, "reference": "script-earn"}
    live.send("POST", "/v1/earn", "partner", body=earn)
    hold = {"member_id": member_id, "points": 1, "reference": "script-hold"}
    opened = live.send("POST", "/v1/holds", "partner", body=hold)
    assert opened.status_code == 201, opened.text
    hold_id = opened.json()["hold_id"]
    live.send("POST", f"/v1/holds/{hold_id}/void", "partner", body={},
              template="/v1/holds/{hold_id}/void")  # fmt: skip
    _, public_key = generate_keypair()
    keys = "/v1/admin/partners/{partner_id}/keys"
    key = live.send("POST", "/v1/admin/partners/grocer/keys", op, body={"public_key": public_key},
                    template=keys).json()  # fmt: skip
    live.send("DELETE", f"/v1/admin/partners/grocer/keys/{key['key_id']}", op,
              template=keys + "/{key_id}")  # fmt: skip
    live.send("POST", "/v1/admin/partners/nobody/keys", op, body={"public_key": public_key},
              template=keys)  # fmt: skip
    _webhooks(live)
    _settle_and_pay(live)
    _adjust(live, member_id)
    live.send("GET", "/v1/reports/receivables", fin, params={"as_of": "2026-12-31"})
    live.send("GET", "/v1/reports/receivables.csv", fin, params={"as_of": "2026-12-31"})
    _onboard(live, "ended")
    update = "/v1/admin/partners/{partner_id}"
    live.send("PATCH", "/v1/admin/partners/ended", op, body={"status": "terminated"},
              template=update)  # fmt: skip
    live.send("PATCH", "/v1/admin/partners/ended", op, body={"status": "active"},
              template=update)  # fmt: skip


def _webhooks(live: Live) -> None:
    """The subscription's life (404 before and after, 422 for an unknown event), the keys,
    and a real event (a revoked key) whose delivery is listed and sent again."""
    hook, deliveries = "/v1/webhook", "/v1/webhook/deliveries"
    retry = deliveries + "/{event_id}/retry"
    live.send("DELETE", hook, "partner")  # the generated calls may have subscribed
    for method in ("DELETE", "GET"):
        assert live.send(method, hook, "partner").status_code == 404
    refused = live.send("PUT", hook, "partner", body={"url": "https://127.0.0.1:9/hook",
                                                      "events": ["batch.deleted"]})  # fmt: skip
    assert refused.status_code == 422, refused.text
    subscription = {"url": "https://127.0.0.1:9/hook", "events": ["key.revoked"]}
    assert live.send("PUT", hook, "partner", body=subscription).status_code == 200
    assert live.send("GET", hook, "partner").json() == live.send("GET", hook, "partner").json()
    keys = live.send("GET", "/v1/exchange-keys", "none").json()["keys"]
    assert [key["status"] for key in keys] == ["active"]
    _, public_key = generate_keypair()
    key = live.send("POST", "/v1/admin/partners/grocer/keys", "operator",
                    body={"public_key": public_key},
                    template="/v1/admin/partners/{partner_id}/keys").json()  # fmt: skip
    live.send("DELETE", f"/v1/admin/partners/grocer/keys/{key['key_id']}", "operator",
              template="/v1/admin/partners/{partner_id}/keys/{key_id}")  # fmt: skip
    for _ in range(100):  # the worker fans the key.revoked event out within a second or two
        found = live.send("GET", deliveries, "partner").json()["deliveries"]
        revoked = [d for d in found if d["type"] == "key.revoked"]
        if revoked:
            break
        time.sleep(0.1)
    assert revoked, found
    assert live.send("GET", deliveries, "partner", params={"status": "sent"}).status_code == 422
    key = {"Idempotency-Key": f"retry-{time.monotonic_ns()}"}
    again = live.send("POST", f"{deliveries}/{revoked[-1]['event_id']}/retry", "partner",
                      template=retry, headers=key)  # fmt: skip
    assert again.status_code == 202, again.text
    replayed = live.send("POST", f"{deliveries}/{revoked[-1]['event_id']}/retry", "partner",
                         template=retry, headers=key)  # fmt: skip
    assert (replayed.status_code, replayed.headers.get("idempotency-replayed")) == (202, "true")
    assert replayed.content == again.content
    reused = live.send("POST", f"{deliveries}/evt_other/retry", "partner", template=retry,
                       headers=key)  # fmt: skip
    assert (reused.status_code, reused.json()["code"]) == (422, "idempotency_key_reused")
    missing = live.send("POST", f"{deliveries}/evt_nope/retry", "partner", template=retry)
    assert missing.status_code == 404, missing.text
    live.send("POST", f"{deliveries}/evt_nope/retry", "partner", template=retry,
              headers={"Idempotency-Key": ""})  # fmt: skip
    assert live.send("DELETE", hook, "partner").status_code == 204


def _settle_and_pay(live: Live) -> None:
    time.sleep(1.1)
    period_end = datetime.now(UTC).replace(microsecond=0).isoformat()
    for _ in range(2):  # 201 a new run, then 200 the same run
        run = live.send("POST", "/v1/admin/settlements", "operator",
                        body={"period_end": period_end}).json()  # fmt: skip
    run_id = run["run_id"]
    live.send("POST", f"/v1/settlements/{run_id}/approval", "finance",
              template="/v1/settlements/{run_id}/approval")  # fmt: skip
    documents = live.send("GET", f"/v1/settlements/{run_id}/documents", "finance",
                          template="/v1/settlements/{run_id}/documents").json()  # fmt: skip
    for document in documents["items"][:1]:
        live.send("GET", f"/v1/documents/{document['document_id']}", "finance",
                  template="/v1/documents/{document_ref}")  # fmt: skip
    payment = {"partner_id": "grocer", "direction": "received", "value_date": "2026-11-20",
               "amount": {"amount": "1.00", "currency": "EUR"},
               "bank_reference": "bank-1"}  # fmt: skip
    live.send("POST", "/v1/payments", "finance", body=payment, headers=_json_headers())
    payment["partner_id"] = "nobody"
    live.send("POST", "/v1/payments", "finance", body=payment, headers=_json_headers())


def _adjust(live: Live, member_id: str) -> None:
    """Requested by admin, refused to the same token (403), approved by finance (200),
    then not pending (409); a debit the member can no longer cover is 422 at approval."""
    approve = "/v1/adjustments/{adjustment_id}/approval"
    for points in (5, -400):
        body = {"member_id": member_id, "points": points, "issuer": "operator",
                "reason": "goodwill"}  # fmt: skip
        response = live.send("POST", "/v1/adjustments", "operator", body=body,
                             headers=_json_headers())  # fmt: skip
        assert response.status_code == 201, response.text
        url = f"/v1/adjustments/{response.json()['adjustment_id']}"
        live.send("GET", url, "operator", template="/v1/adjustments/{adjustment_id}")
        if points < 0:  # the member spends the points before the debit is approved
            burn = {"member_id": member_id, "points": 300, "reference": "script-burn"}
            live.send("POST", "/v1/burn", "partner", body=burn)
        for auth in ("operator", "finance", "finance"):
            live.send("POST", url + "/approval", auth, template=approve)


def test_every_documented_status_is_reached(live: Live, fuzzed: list[str]) -> None:
    doc = httpx.get(f"{live.base_url}/schema/openapi.json").json()
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            _probe(live, method, path, operation)
    _script(live)
    missing = {
        (method, path, int(status))
        for path, item in doc["paths"].items()
        for method, operation in item.items()
        for status in operation["responses"]
        if int(status) not in live.seen.get((method, path), set())
        and not any(path.startswith(prefix) for prefix in COVERED_ELSEWHERE)
    }
    unreached = UNREACHED | {
        (method, path, 503): _AWAY
        for path, item in doc["paths"].items()
        for method, operation in item.items()
        if "503" in operation["responses"]
        and not any(path.startswith(prefix) for prefix in COVERED_ELSEWHERE)
    }
    assert sorted(missing - unreached.keys()) == [], "documented, never answered"
    assert sorted(unreached.keys() - missing) == [], "reached now: remove from UNREACHED"
