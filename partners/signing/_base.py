"""The signature base (RFC 9421 §2.5) and the component resolver shared by signer and
verifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import http_sf
from http_message_signatures import HTTPMessageSignaturesException, HTTPMessageVerifier
from http_message_signatures.structures import normalize_header_value
from http_sf.compat import Item

from partners.errors import SignatureInvalid
from partners.signing._data import IncomingRequest, ParsedSignature
from partners.signing._parse import field_lines

__all__ = [
    "ComponentResolver",
    "FieldLines",
    "SignedMessage",
    "WindowlessVerifier",
    "signature_base",
]


# --- the component resolver shared by signer and verifier -------------------------------------


@dataclass(frozen=True, slots=True)
class SignedMessage:
    """The view of a request the library's signer and verifier work on."""

    method: str
    authority: str
    path: str
    query: str
    headers: Any  # a dict when signing (the library writes to it), a FieldLines when verifying


@dataclass(frozen=True, slots=True)
class FieldLines:
    """Read-only header lines in arrival order, duplicates kept (all the verifier reads)."""

    lines: Sequence[tuple[str, str]]

    def items(self) -> Sequence[tuple[str, str]]:
        return self.lines


class ComponentResolver:
    """Component values per RFC 9421 §2.1-2.2 for the components this profile allows.

    `@path` and `@query` are the request's raw spelling; `@authority` is the exchange's
    configured host, never the request's Host header. Header field values are each
    trimmed and folded (§2.1) and multiple lines joined with ", " (the profile refuses
    duplicates before this point, but the resolver itself stays RFC-exact).
    """

    def __init__(self, message: SignedMessage) -> None:
        self._message = message

    def resolve(self, component: Item) -> str:
        name = component.value
        if component.params or not isinstance(name, str):
            raise HTTPMessageSignaturesException("component parameters are not supported")
        message = self._message
        derived = {
            "@method": message.method,
            "@authority": message.authority,
            "@path": message.path or "/",
            "@query": "?" + message.query,
        }
        if name.startswith("@"):
            if name not in derived:
                raise HTTPMessageSignaturesException(f"derived component {name} not supported")
            return derived[name]
        lines = field_lines(list(message.headers.items()), name)
        if not lines:
            raise HTTPMessageSignaturesException(f"covered header {name} absent")
        return ", ".join(normalize_header_value(line) for line in lines)


class WindowlessVerifier(HTTPMessageVerifier):
    """The library's verifier minus its clock checks, which read the wall clock.

    Our profile checks `created`/`expires` against the caller's `now` before this runs.
    """

    def validate_created_and_expires(self, sig_input: Any, max_age: Any = None) -> None:
        return None


# --- the signature base ---------------------------------------------------------------------


def signature_base(
    parsed: ParsedSignature, request: IncomingRequest, *, authority: str
) -> tuple[bytes, str]:
    """The RFC 9421 §2.5 signature base of `parsed` over `request`, and its
    `Signature-Input` member (`label=(...);params`).

    Built in one pass from the already-parsed signature: this is the verification hot
    path, and going through the library's verifier would parse the headers again and
    resolve every component through its generic machinery. Tests check that this base
    is byte for byte what http-message-signatures builds for the same request.
    """
    derived = {
        "@method": request.method,
        "@authority": authority,
        "@path": request.path or "/",
        "@query": "?" + request.query,
    }
    lines = []
    for name in parsed.components:
        if name.startswith("@"):
            value = derived.get(name)
            if value is None:
                raise SignatureInvalid(f"derived component {name} is not part of the profile")
        else:
            fields = field_lines(request.headers, name)
            if not fields:
                raise SignatureInvalid(f"covered header {name} is absent")
            value = ", ".join(normalize_header_value(line) for line in fields)
        lines.append(f'"{name}": {value}')
    # The parameters came out of http_sf's own parser, so they are structured-field items;
    # ParsedSignature types them as `object` to keep http_sf's types out of its interface.
    structure: Any = {
        parsed.label: ([(name, {}) for name in parsed.components], dict(parsed.params))
    }
    member = http_sf.ser(structure)
    lines.append(f'"@signature-params": {member.split("=", 1)[1]}')
    try:
        return "\n".join(lines).encode("ascii"), member
    except UnicodeEncodeError:
        raise SignatureInvalid("covered components must have ASCII values") from None
