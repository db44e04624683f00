"""A member's book written as a table, and a harness that runs the pure rules on it.

beancount's way: the fixture is a small ledger one can read. A test writes the lots (and
any open holds) as whitespace-separated columns; `-` means "none". Times are ISO dates
(`2027-01-31`, `2026-11-23T10:15`, UTC) or relative to the harness's clock
(`now`, `now+10d`, `now-2h`, `now+15m`, `now+30s`)::

    ledger = Ledger('''
        lot  issuer  points  remaining  created  available  expires
        a    grocer  100     100        now-2d   -          now+10d
        b    fuel    50      20         now-1d   now+1d     now+20d
    ''')

`available` `-` means the lot's points were available when it was created; a time means
the lot is pending until then (its maturation is applied by `apply_due`, as on read).
`remaining` defaults to `points`, `created` to `now-1d`, `price` to the issuer's issue
price. Holds are a second table (`hold partner points created expires draws`, draws as
`a:20,b:10`); the lots' `remaining` is written net of what holds reserved, as stored.

Lots and holds keep their names, and lots or holds a rule creates can be named when the
rule runs (`ledger.earn("grocer", 10, lot="c")`), so assertions read like the table:
`ledger.remaining() == {"a": 70, "b": 20, "c": 10}`.

The harness mirrors the service: each operation first applies what has fallen due
(`apply_due`), then the rule. `refused` checks the other half of the contract: the rule
raises its typed error and leaves the book and the partners' state exactly as they were.
Ids come from a counter, so the same test always builds the same book.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from exchange.errors import ExchangeError
from exchange.ledger import (
    AllocationKind,
    Balance,
    Context,
    Effect,
    Hold,
    HoldStatus,
    Lot,
    MemberBook,
    OriginalPosting,
    PartnerState,
    PartnerTerms,
    Posting,
    PostingType,
    apply_due,
    balance,
    burn,
    capture_hold,
    earn,
    open_hold,
    reverse,
    void_hold,
)

__all__ = ["MEMBER", "NOW", "TTL", "Ledger", "terms"]

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
TTL = timedelta(days=1095)
MEMBER = "mem_1"
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
_RELATIVE = re.compile(r"^now(?:([+-])(\d+)([dhms]))?$")


def terms(partner_id: str, **changes: object) -> PartnerTerms:
    """A partner's terms: EUR, issue price 0.012, redemption value 0.010, 1 point per EUR."""
    defaults: dict[str, object] = {
        "partner_id": partner_id,
        "active": True,
        "settlement_currency": "EUR",
        "issue_price": Decimal("0.012"),
        "redemption_value": Decimal("0.010"),
        "earn_rates": {"EUR": Decimal(1)},
        "credit_limit": None,
        "exposure": Decimal(0),
    }
    return PartnerTerms(**(defaults | changes))  # type: ignore[arg-type]


def _rows(table: str) -> list[dict[str, str]]:
    lines = [line.split() for line in table.strip().splitlines() if line.strip()]
    if not lines:
        return []
    header, *body = lines
    for row in body:
        if len(row) != len(header):
            raise ValueError(f"row {row} does not match the columns {header}")
    return [dict(zip(header, row, strict=True)) for row in body]


class _Counter:
    """Ids in the order they are asked for: new lots tie-break "oldest first" as in
    production, where ids are time-ordered."""

    def __init__(self, start: int) -> None:
        self.next = start

    def __call__(self) -> uuid.UUID:
        self.next += 1
        return uuid.UUID(int=self.next)


@dataclass
class Ledger:
    """One member's book, the partners' state and a clock: all the rules ever see."""

    lots: str = ""
    holds: str = ""
    debt: int = 0
    now: datetime = NOW
    closed_until: datetime = datetime(1970, 1, 1, tzinfo=UTC)
    partners: dict[str, PartnerState] = field(default_factory=dict)
    book: MemberBook = field(init=False)
    names: dict[uuid.UUID, str] = field(init=False, default_factory=dict)
    ids: _Counter = field(init=False, default_factory=lambda: _Counter(1 << 32))

    def __post_init__(self) -> None:
        self.book = MemberBook(MEMBER, self.debt)
        for index, row in enumerate(_rows(self.lots), start=1):
            self._add_lot(uuid.UUID(int=index), row)
        for index, row in enumerate(_rows(self.holds), start=1):
            self._add_hold(uuid.UUID(int=(1 << 16) + index), row)

    # -- reading the tables -----------------------------------------------------------------

    def time(self, text: str) -> datetime:
        """`now`, `now+10d`, `now-2h`... relative to the clock, or an ISO time in UTC."""
        relative = _RELATIVE.match(text)
        if relative is None:
            return datetime.fromisoformat(text).replace(tzinfo=UTC)
        sign, amount, unit = relative.groups()
        if sign is None:
            return self.now
        delta = timedelta(**{_UNITS[unit]: int(amount)})
        return self.now + delta if sign == "+" else self.now - delta

    def partner(self, partner_id: str) -> PartnerState:
        if partner_id not in self.partners:
            self.partners[partner_id] = PartnerState(terms(partner_id))
        return self.partners[partner_id]

    def _add_lot(self, lot_id: uuid.UUID, row: dict[str, str]) -> None:
        created = self.time(row.get("created", "now-1d"))
        available = row.get("available", "-")
        issuer = row["issuer"]
        points = int(row["points"])
        price = row.get("price", "-")
        self.book.lots[lot_id] = Lot(
            lot_id=lot_id,
            member_id=MEMBER,
            issuer_id=issuer,
            earn_id=uuid.UUID(int=(1 << 24) + lot_id.int),
            initial=points,
            remaining=int(row.get("remaining", points)),
            unit_price=self.partner(issuer).terms.issue_price if price == "-" else Decimal(price),
            available_at=created if available == "-" else self.time(available),
            expires_at=self.time(row["expires"]),
            matured=available == "-",
            created_at=created,
        )
        self.names[lot_id] = row["lot"]

    def _add_hold(self, hold_id: uuid.UUID, row: dict[str, str]) -> None:
        by_name = {name: lot_id for lot_id, name in self.names.items()}
        draws = [
            (by_name[lot], int(points))
            for lot, points in (draw.split(":") for draw in row["draws"].split(","))
        ]
        if sum(points for _, points in draws) != int(row["points"]):
            raise ValueError(f"hold {row['hold']}: its draws do not add up to its points")
        self.book.holds[hold_id] = Hold(
            hold_id=hold_id,
            member_id=MEMBER,
            partner_id=row["partner"],
            points=int(row["points"]),
            status=HoldStatus.OPEN,
            created_at=self.time(row.get("created", "now-1h")),
            expires_at=self.time(row["expires"]),
            reference=None,
            draws=draws,
        )
        self.names[hold_id] = row["hold"]

    # -- looking at the book ----------------------------------------------------------------

    @property
    def ctx(self) -> Context:
        return Context(now=self.now, closed_until=self.closed_until, points_ttl=TTL, ids=self.ids)

    def id_of(self, name: str) -> uuid.UUID:
        [found] = [item for item, known in self.names.items() if known == name]
        return found

    def lot(self, name: str) -> Lot:
        return self.book.lots[self.id_of(name)]

    def hold(self, name: str) -> Hold:
        return self.book.holds[self.id_of(name)]

    def remaining(self) -> dict[str, int]:
        """Every lot's remaining points, by name."""
        return {self.names[lot_id]: lot.remaining for lot_id, lot in self.book.lots.items()}

    def lot_names(self, posting: Posting, kind: AllocationKind) -> list[tuple[str, int]]:
        """(lot, points) the posting moved with allocations of `kind`, in order."""
        return [(self.names[a.lot_id], a.points) for a in posting.allocations if a.kind is kind]

    def posted(self, since: int = 0) -> list[tuple[PostingType, int]]:
        """(type, points) of the postings recorded since the `since`-th, in order."""
        return [(posting.type, posting.points) for posting in self.book.postings[since:]]

    def balance(self) -> Balance:
        self.settle()
        return balance(self.book, self.now)

    # -- running the rules ------------------------------------------------------------------

    def settle(self) -> list[Posting]:
        """Apply what has fallen due by now (as every read and posting does)."""
        before = len(self.book.postings)
        apply_due(self.book, self.ctx)
        return self.book.postings[before:]

    def earn(
        self,
        partner: str,
        points: int,
        *,
        lot: str | None = None,
        available: str | None = None,
        expires: str | None = None,
    ) -> Effect:
        self.settle()
        effect = earn(
            self.book,
            self.ctx,
            self.partner(partner),
            points,
            reference=None,
            available_at=self.time(available) if available else None,
            expires_at=self.time(expires) if expires else None,
        )
        [created] = [
            item for item in self.book.lots.values() if item.earn_id == effect.posting.posting_id
        ]
        self.names[created.lot_id] = lot or f"lot#{len(self.names)}"
        return effect

    def burn(self, partner: str, points: int) -> Effect:
        self.settle()
        return burn(self.book, self.ctx, self.partner(partner), points, reference=None)

    def open_hold(
        self, partner: str, points: int, *, hold: str | None = None, expires_in_s: int = 900
    ) -> Effect:
        self.settle()
        effect = open_hold(
            self.book,
            self.ctx,
            self.partner(partner),
            points,
            reference=None,
            expires_in_s=expires_in_s,
        )
        assert effect.hold is not None
        self.names[effect.hold.hold_id] = hold or f"hold#{len(self.names)}"
        return effect

    def capture(self, hold: str, points: int | None = None) -> Effect:
        self.settle()
        partner = self.partner(self.hold(hold).partner_id)
        return capture_hold(self.book, self.ctx, partner, self.id_of(hold), points)

    def void(self, hold: str) -> Effect:
        self.settle()
        return void_hold(self.book, self.ctx, self.id_of(hold))

    def reverse(self, transaction: Effect | Posting, points: int | None = None) -> Effect:
        """Reverse an earn or a burn as the service would: the original as the store loads
        it (what earlier reversals took back included), the original's partner calling."""
        self.settle()
        original = self.original(transaction)
        partner = self.partner(original.partner_id)
        return reverse(self.book, self.ctx, partner, original, points, reference=None)

    def original(self, transaction: Effect | Posting) -> OriginalPosting:
        """What `exchange.store.load_originals` reads for a transaction of this book."""
        posting = transaction.posting if isinstance(transaction, Effect) else transaction
        reversals = [p for p in self.book.postings if p.reverses == posting.posting_id]
        restored: dict[uuid.UUID, int] = {}
        for reversal in reversals:
            for allocation in reversal.allocations:
                if allocation.kind is AllocationKind.RELEASE:
                    restored[allocation.lot_id] = (
                        restored.get(allocation.lot_id, 0) + allocation.points
                    )
        draws = [(a.lot_id, a.points) for a in posting.allocations if a.kind is AllocationKind.DRAW]
        draws.sort(key=lambda draw: self.book.lots[draw[0]].sort_key())
        earned = [
            lot.lot_id for lot in self.book.lots.values() if lot.earn_id == posting.posting_id
        ]
        return OriginalPosting(
            posting_id=posting.posting_id,
            type=posting.type,
            partner_id=posting.partner_id or "",
            member_id=posting.member_id,
            points=posting.points,
            unit_price=posting.unit_price or Decimal(0),
            currency=posting.currency or "EUR",
            reversed_points=sum(reversal.points for reversal in reversals),
            lot_id=earned[0] if earned else None,
            draws=tuple(draws),
            restored=restored,
        )

    def _exposure(self) -> dict[str, Decimal]:
        """The partners' state the rules change: the issuance value each batch adds."""
        return {
            p: state.exposure_added for p, state in self.partners.items() if state.exposure_added
        }

    def refused(self, operation: Callable[[], object]) -> ExchangeError:
        """Run an operation that must be refused; return its error after checking that the
        book and the partners' state are exactly as before (due changes applied first, as
        the service applies them before any rule)."""
        self.settle()
        book, exposure = copy.deepcopy(self.book), self._exposure()
        try:
            operation()
        except ExchangeError as error:
            assert self.book == book, "a refused operation changed the book"
            assert self._exposure() == exposure, "a refused operation changed an exposure"
            return error
        raise AssertionError("the operation was not refused")
