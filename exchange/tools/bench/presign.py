"""Pre-signed partner requests: every byte the load generator sends, built before the clock runs.

Each request is a complete HTTP/1.1 message (request line, headers, body) signed per contract
§2.1 with the partner's Ed25519 key: `created`, `keyid`, a fresh `nonce`, `tag="coalition-v1"`,
covering `@method @authority @path @query` and, on POST, `content-type content-digest
idempotency-key`, with a `Content-Digest` (sha-256) of the body and a fresh Idempotency-Key.

Why not `partners.signing.sign_request` for every request: the RFC 9421 library behind it
spends ~0.5 ms per signature on structured-field serialisation, so a minute of load would
take minutes to sign. `sign_fast` writes the same signature base directly (the profile
fixes every choice the library would make) and `check_fast_signer` proves, before any batch
is signed, that it produces byte-for-byte the headers `sign_components` produces for the
same inputs (Ed25519 is deterministic). The server verifies every request with the real
verifier, so a signing mistake could only show up as 401s, which count as errors.

Signing runs in a pool of processes (`SigningPool`), one per core, each holding the keys and
member ids from its initialiser; chunks come back as length-prefixed records, ready to write
to the file the load generator reads (`write_records` / `read_records`).
"""

from __future__ import annotations

import base64
import hashlib
import multiprocessing
import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "CHUNK_SIZE",
    "GET_COMPONENTS",
    "POST_COMPONENTS",
    "RequestKind",
    "Signer",
    "SigningPool",
    "Workload",
    "check_fast_signer",
    "content_digest",
    "read_records",
    "sign_fast",
    "write_records",
]

RequestKind = Literal["earn_uniform", "earn_hot_partner", "burn_hot_members", "balance_read"]

POST_COMPONENTS: Final = (
    "@method",
    "@authority",
    "@path",
    "@query",
    "content-type",
    "content-digest",
    "idempotency-key",
)
GET_COMPONENTS: Final = ("@method", "@authority", "@path", "@query")
CHUNK_SIZE: Final = 2000
TAG: Final = "coalition-v1"
LABEL: Final = "sig1"
EARN_POINTS_MAX: Final = 500
BURN_POINTS_MAX: Final = 5
_RECORD_LENGTH_BYTES: Final = 4


@dataclass(frozen=True, slots=True)
class Signer:
    """One partner's signing identity (the private key never leaves the bench)."""

    partner_id: str
    key_id: str
    private_key: str  # base64url of the raw 32-byte Ed25519 private key


@dataclass(frozen=True, slots=True)
class Workload:
    """Who calls whom: the population the requests are drawn from.

    Member `i` was enrolled by (and so is linked to) partner `i % len(signers)`.
    """

    authority: str
    signers: tuple[Signer, ...]
    members: tuple[str, ...]
    hot_members: tuple[str, ...]

    def home(self, member_index: int) -> int:
        return member_index % len(self.signers)


def content_digest(body: bytes) -> str:
    """RFC 9530 `Content-Digest` with sha-256 (what `partners.signing.content_digest` gives)."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii") + ":"


def _sf_string(value: str) -> str:
    # Key ids are `key_<hex>` and nonces base64url: nothing an sf-string would have to escape.
    if '"' in value or "\\" in value or not value.isascii():
        raise ValueError(f"{value!r} needs sf-string escaping, which the fast signer omits")
    return f'"{value}"'


def sign_fast(
    *,
    method: str,
    authority: str,
    path: str,
    fields: dict[str, str],
    components: Sequence[str],
    key_id: str,
    private_key: Ed25519PrivateKey,
    created: int,
    nonce: str,
) -> tuple[str, str]:
    """(`Signature-Input`, `Signature`) for a request without a query string.

    `fields` maps lower-case header names to their (already trimmed) values and must hold
    every covered header.
    """
    covered = " ".join(f'"{name}"' for name in components)
    params = (
        f"({covered});created={created};keyid={_sf_string(key_id)};"
        f"nonce={_sf_string(nonce)};tag={_sf_string(TAG)}"
    )
    derived = {"@method": method, "@authority": authority, "@path": path, "@query": "?"}
    lines = [
        f'"{name}": {derived[name] if name in derived else fields[name]}' for name in components
    ]
    lines.append(f'"@signature-params": {params}')
    signature = private_key.sign("\n".join(lines).encode("ascii"))
    return f"{LABEL}={params}", f"{LABEL}=:{base64.b64encode(signature).decode('ascii')}:"


def check_fast_signer() -> None:
    """Prove `sign_fast` and `content_digest` equal the project's signer on sample requests.

    Raises RuntimeError naming the first difference. Runs in the orchestrator, once.
    """
    from partners.signing import content_digest as reference_digest  # noqa: PLC0415
    from partners.signing import generate_keypair, load_private_key, sign_components  # noqa: PLC0415

    private_b64, _ = generate_keypair()
    key = load_private_key(private_b64)
    body = b'{"member_id":"mem_00","points":7,"reference":"check"}'
    if content_digest(body) != reference_digest(body):
        raise RuntimeError("the bench's Content-Digest differs from partners.signing's")
    cases: list[tuple[str, str, dict[str, str], Sequence[str]]] = [
        (
            "POST",
            "/v1/earn",
            {
                "content-type": "application/json",
                "content-digest": content_digest(body),
                "idempotency-key": "0123456789abcdef",
            },
            POST_COMPONENTS,
        ),
        ("GET", "/v1/members/mem_00/balance", {}, GET_COMPONENTS),
    ]
    for method, path, fields, components in cases:
        common: dict[str, Any] = {
            "method": method,
            "authority": "127.0.0.1:8000",
            "path": path,
            "key_id": "key_check",
            "private_key": key,
            "created": 1_800_000_000,
            "nonce": "abcdefghijklmnopqrstuvwx",
        }
        expected = sign_components(
            query="", headers=fields, components=components, label=LABEL, **common
        )
        got = sign_fast(fields=fields, components=components, **common)
        if got != (expected["Signature-Input"], expected["Signature"]):
            raise RuntimeError(
                f"the bench's fast signer differs from partners.signing on {method} {path}:\n"
                f"  bench:    {got}\n  project:  {expected}"
            )


# --- building requests (runs in the pool's processes) ------------------------------------------


@dataclass(slots=True)
class _WorkerState:
    workload: Workload
    keys: list[Ed25519PrivateKey]
    rng: random.Random


_state: _WorkerState | None = None


def _init_worker(workload: Workload) -> None:
    global _state  # noqa: PLW0603 - per-process state of a pool worker
    keys = [
        Ed25519PrivateKey.from_private_bytes(_b64url_decode(signer.private_key))
        for signer in workload.signers
    ]
    _state = _WorkerState(workload, keys, random.Random(os.urandom(16)))


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _token(rng: random.Random, size: int) -> str:
    """Random url-safe text (nonces, idempotency keys); unique enough for a benchmark run."""
    return base64.urlsafe_b64encode(rng.randbytes(size)).decode("ascii").rstrip("=")


def _post(
    state: _WorkerState, partner: int, path: str, payload: dict[str, Any], created: int
) -> bytes:
    signer = state.workload.signers[partner]
    body = msgspec.json.encode(payload)
    idempotency_key = _token(state.rng, 18)
    fields = {
        "content-type": "application/json",
        "content-digest": content_digest(body),
        "idempotency-key": idempotency_key,
    }
    signature_input, signature = sign_fast(
        method="POST",
        authority=state.workload.authority,
        path=path,
        fields=fields,
        components=POST_COMPONENTS,
        key_id=signer.key_id,
        private_key=state.keys[partner],
        created=created,
        nonce=_token(state.rng, 24),
    )
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {state.workload.authority}\r\n"
        f"Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Content-Digest: {fields['content-digest']}\r\n"
        f"Idempotency-Key: {idempotency_key}\r\n"
        f"Signature-Input: {signature_input}\r\n"
        f"Signature: {signature}\r\n\r\n"
    )
    return head.encode("ascii") + body


def _get(state: _WorkerState, partner: int, path: str, created: int) -> bytes:
    signer = state.workload.signers[partner]
    signature_input, signature = sign_fast(
        method="GET",
        authority=state.workload.authority,
        path=path,
        fields={},
        components=GET_COMPONENTS,
        key_id=signer.key_id,
        private_key=state.keys[partner],
        created=created,
        nonce=_token(state.rng, 24),
    )
    head = (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {state.workload.authority}\r\n"
        f"Signature-Input: {signature_input}\r\n"
        f"Signature: {signature}\r\n\r\n"
    )
    return head.encode("ascii")


def _one(state: _WorkerState, kind: RequestKind, created: int) -> bytes:
    workload, rng = state.workload, state.rng
    partners = len(workload.signers)
    if kind == "balance_read":
        index = rng.randrange(len(workload.members))
        path = f"/v1/members/{workload.members[index]}/balance"
        return _get(state, workload.home(index), path, created)
    if kind == "burn_hot_members":
        payload = {
            "member_id": rng.choice(workload.hot_members),
            "points": rng.randint(1, BURN_POINTS_MAX),
            "reference": "bench-burn-" + _token(rng, 9),
        }
        return _post(state, rng.randrange(partners), "/v1/burn", payload, created)
    partner = 0 if kind == "earn_hot_partner" else rng.randrange(partners)
    payload = {
        "member_id": rng.choice(workload.members),
        "points": rng.randint(1, EARN_POINTS_MAX),
        "reference": "bench-earn-" + _token(rng, 9),
    }
    return _post(state, partner, "/v1/earn", payload, created)


def _sign_chunk(task: tuple[RequestKind, int]) -> bytes:
    """`count` requests of one kind as length-prefixed records (signed now)."""
    kind, count = task
    if _state is None:  # pragma: no cover - the pool initialiser always runs first
        raise RuntimeError("signing worker used before its initialiser ran")
    created = int(time.time())
    out = bytearray()
    for _ in range(count):
        request = _one(_state, kind, created)
        out += len(request).to_bytes(_RECORD_LENGTH_BYTES, "big")
        out += request
    return bytes(out)


class SigningPool:
    """Worker processes that sign batches of requests; one per core by default."""

    def __init__(self, workload: Workload, processes: int | None = None) -> None:
        context = multiprocessing.get_context("spawn")
        self.processes = processes or os.cpu_count() or 1
        self._pool = context.Pool(self.processes, initializer=_init_worker, initargs=(workload,))

    def sign_to_file(self, kind: RequestKind, count: int, path: Path) -> float:
        """Sign `count` requests into `path` (length-prefixed records); return the seconds taken."""
        started = time.perf_counter()
        tasks = [(kind, min(CHUNK_SIZE, count - done)) for done in range(0, count, CHUNK_SIZE)]
        with path.open("wb") as handle:
            for blob in self._pool.imap_unordered(_sign_chunk, tasks):
                handle.write(blob)
        return time.perf_counter() - started

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()


def write_records(path: Path, records: Sequence[bytes]) -> None:
    with path.open("wb") as handle:
        for record in records:
            handle.write(len(record).to_bytes(_RECORD_LENGTH_BYTES, "big"))
            handle.write(record)


def read_records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    return list(_records(memoryview(data)))


def _records(data: memoryview) -> Iterator[bytes]:
    offset = 0
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + _RECORD_LENGTH_BYTES], "big")
        offset += _RECORD_LENGTH_BYTES
        yield bytes(data[offset : offset + length])
        offset += length
