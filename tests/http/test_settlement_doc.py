"""The curl commands of docs/settlement.md run against the real API.

Every `curl` in the finance guide is parsed (method, path, headers, body), its shell
variables and `…` placeholders are filled in, and it is sent to the app with real operator
tokens. A command must reach a route (no routing 404/405), pass authentication and have its
body and query accepted (no 400/401/403/415/422 of the request's shape): what it may still
meet is the empty database's own answer, e.g. `404 member_not_found` for the placeholder
member. A path, header or field the API does not know fails here, naming the command.
"""

from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from exchange.clock import FrozenClock

DOC = Path(__file__).resolve().parents[2] / "docs" / "settlement.md"
BLOCK = re.compile(r"```(?:sh|bash)\n(.*?)```", re.DOTALL)
PLACEHOLDERS = {
    "mem_…": "mem_" + "0" * 32,
    "mem_0193...": "mem_" + "0" * 32,
    "adj_…": "adj_" + "0" * 24,
    "adj_0193...": "adj_" + "0" * 24,
    "doc_…": "doc_" + "0" * 24,
}
# Refusals that mean the command itself is wrong (its path, method, headers or body);
# other answers (404 member_not_found, 422 as_of_not_a_period_end) are the empty database's.
WRONG_STATUS = {400, 401, 403, 405, 406, 413, 415}
WRONG_CODE = {"validation_error", "not_found", "method_not_allowed", "idempotency_key_reused"}


def _commands(markdown: str) -> list[str]:
    """Each curl command of the doc's shell blocks, continuation lines joined."""
    commands: list[str] = []
    for block in BLOCK.findall(markdown):
        pending = ""
        for line in block.splitlines():
            if not pending and not line.lstrip().startswith("curl "):
                continue
            pending += line.removesuffix("\\") + "\n"
            if line.endswith("\\") or pending.count("'") % 2:
                continue  # continued, or inside a quoted body
            commands.append(pending)
            pending = ""
    return commands


def _request(command: str, tokens: dict[str, str]) -> httpx.Request:
    words = shlex.split(command.split(" | ", 1)[0].split(" > ", 1)[0])
    method, headers, body, url = "GET", {}, None, None
    for flag, value in zip(words, [*words[1:], ""], strict=True):
        if flag == "-X":
            method = value
        elif flag == "-H":
            name, _, text = _fill(value, tokens).partition(":")
            headers[name.strip()] = text.strip()
        elif flag == "-d":
            method, body = ("POST" if method == "GET" else method), _fill(value, tokens)
        elif re.match(r"(\$EX|https://exchange\.example)/", flag):
            url = _fill(flag, tokens)
    assert url is not None, command
    return httpx.Request(method, url, headers=headers, content=body)


def _fill(text: str, tokens: dict[str, str]) -> str:
    for placeholder, value in PLACEHOLDERS.items():
        text = text.replace(placeholder, value)
    text = re.sub(r"^https://exchange\.example", "$EX", text)
    for name, value in sorted(tokens.items(), key=lambda item: -len(item[0])):
        text = text.replace(f"${name}", value)
    return text.replace("$EX", "https://exchange.test").replace("$RUN", "stl_20270101T000000Z")


async def test_every_curl_of_the_finance_guide_fits_the_api(
    client: httpx.AsyncClient,
    clock: FrozenClock,
    admin_headers: dict[str, str],
    finance_headers: dict[str, str],
) -> None:
    clock.set(datetime(2027, 1, 2, 9, 0, tzinfo=UTC))  # after the walk-through's cut-off
    admin, finance = admin_headers["Authorization"], finance_headers["Authorization"]
    tokens = {
        "FIN": f"Authorization: {finance}",
        "ADM": f"Authorization: {admin}",
        "FINANCE_TOKEN": finance.removeprefix("Bearer "),
        "OTHER_FINANCE_TOKEN": admin.removeprefix("Bearer "),
        "ADMIN_TOKEN": admin.removeprefix("Bearer "),
    }
    commands = _commands(DOC.read_text())
    assert len(commands) >= 20, "the guide's curl commands were not found"

    sent = []
    for command in commands:
        request = _request(command, tokens)
        response = await client.send(request)
        problem = response.json() if "json" in response.headers.get("content-type", "") else {}
        wrong = response.status_code in WRONG_STATUS or problem.get("code") in WRONG_CODE
        assert not wrong, f"{command}-> {response.text}"
        assert response.status_code < 500, command
        sent.append((request.method, request.url.path))
    assert ("POST", "/v1/payments") in sent
    assert ("GET", "/v1/reports/liabilities") in sent


@pytest.mark.parametrize(
    ("command", "method", "path"),
    [
        ('curl -s -H "$FIN" $EX/v1/settlements/$RUN | jq .', "GET", "/v1/settlements/stl_"),
        ('curl -s -X POST -H "$FIN" \\\n  $EX/v1/payments -d \'{"a":\n 1}\'\n', "POST", "/v1/p"),
    ],
)
def test_the_parser_reads_methods_paths_and_bodies(command: str, method: str, path: str) -> None:
    request = _request(command, {"FIN": "Authorization: Bearer x"})
    assert (request.method, request.url.path[: len(path)]) == (method, path)
    assert request.headers["authorization"] == "Bearer x"
