"""Settings: every `EXCHANGE_*` environment variable, validated once at start-up.

A bad value stops start-up with a `ConfigError` naming the variable and what it
accepts; nothing reads `os.environ` after `Settings.from_env()`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from exchange.client_address import TrustedProxies

__all__ = [
    "VARIABLES",
    "WEBHOOK_KEY_SECRET_BYTES",
    "ConfigError",
    "Settings",
    "SettlementCycle",
    "Variable",
    "parse_key_secrets",
]

SettlementCycle = Literal["daily", "weekly", "monthly"]
LogFormat = Literal["json", "console"]
WEBHOOK_KEY_SECRET_BYTES = 32  # an AES-256 key
# What uvicorn trusted by default when it read X-Forwarded-For itself: the default keeps it.
_LOOPBACK_PROXIES = TrustedProxies.parse("127.0.0.1,::1")


class ConfigError(Exception):
    """A configuration value is missing or malformed; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Variable:
    """One environment variable: its field, default (as text) and documentation."""

    name: str
    field: str
    default: str
    accepts: str
    description: str


def _positive_int(value: str, *, low: int = 1, high: int = 10**9) -> int:
    number = int(value)
    if not low <= number <= high:
        raise ValueError(f"must be between {low} and {high}")
    return number


def _boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")


def _choice(options: tuple[str, ...]) -> Any:
    def parse(value: str) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def _rate_limit(value: str) -> str:
    from limits import parse_many  # noqa: PLC0415 - only needed to validate

    try:
        parse_many(value)
    except ValueError:
        raise ValueError("must be rate limits such as 100/second or 10/second;500/minute") from None
    return value


def _account_code(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,31}", value):
        raise ValueError("must be 1-32 letters, digits, '.', '_', ':' or '-'")
    return value


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("must be an IANA time zone name such as Europe/Riga") from None
    return value


def _database_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"postgresql", "postgres", "postgresql+asyncpg"}:
        raise ValueError("must be a postgresql:// URL")
    return value


def _public_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL such as https://api.example.com")
    return value.rstrip("/")


def _tiers(value: str) -> tuple[tuple[str, int], ...]:
    """`base:0,silver:5000,gold:20000`: names with ascending thresholds, the first at 0."""
    tiers: list[tuple[str, int]] = []
    for part in value.split(","):
        name, _, threshold = part.strip().partition(":")
        if not name.isidentifier() or not threshold.isdigit():
            raise ValueError("each tier must be name:points")
        tiers.append((name, int(threshold)))
    thresholds = [threshold for _, threshold in tiers]
    if thresholds[0] != 0 or thresholds != sorted(set(thresholds)):
        raise ValueError("thresholds must start at 0 and strictly increase")
    if len({name for name, _ in tiers}) != len(tiers):
        raise ValueError("tier names must be unique")
    return tuple(tiers)


def parse_key_secrets(value: str) -> tuple[bytes, ...]:
    """Key-encryption keys, comma- or line-separated: each 32 random bytes in base64
    (`openssl rand -base64 32`); the first encrypts, every one decrypts."""
    keys: list[bytes] = []
    for part in value.replace("\n", ",").split(","):
        text = part.strip()
        if not text:
            continue
        try:
            key = base64.urlsafe_b64decode(text.replace("+", "-").replace("/", "_"))
        except (binascii.Error, ValueError):
            raise ValueError("each key must be base64 (openssl rand -base64 32)") from None
        if len(key) != WEBHOOK_KEY_SECRET_BYTES:
            raise ValueError(f"each key must be {WEBHOOK_KEY_SECRET_BYTES} bytes in base64")
        keys.append(key)
    if not keys:
        raise ValueError("must name at least one key")
    if len(set(keys)) != len(keys):
        raise ValueError("a key is listed twice")
    return tuple(keys)


def _key_secret_file(value: str) -> Path:
    path = Path(value)
    try:
        parse_key_secrets(path.read_text(encoding="ascii"))
    except OSError as exc:
        raise ValueError(f"cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ValueError("must hold base64 text") from None
    return path


def _reminder_days(value: str) -> tuple[int, ...]:
    days = sorted({_positive_int(part.strip(), high=3650) for part in value.split(",")})
    return tuple(reversed(days))


@functools.lru_cache(maxsize=8)
def _authority(public_url: str) -> str:
    """`Settings.authority`, once per URL: every signed request reads it."""
    parts = urlsplit(public_url)
    host = (parts.hostname or "").lower()
    if ":" in host:  # an IPv6 literal keeps its brackets, as clients send it
        host = f"[{host}]"
    default_port = 443 if parts.scheme == "https" else 80
    if parts.port is None or parts.port == default_port:
        return host
    return f"{host}:{parts.port}"


@dataclass(frozen=True, slots=True)
class Settings:
    """The exchange's configuration. Build it with `Settings.from_env()` or directly in tests."""

    database_url: str | None = None
    data_dir: Path = Path(".exchange-data")
    public_url: str = "http://127.0.0.1:8000"
    points_ttl_days: int = 1095
    settlement_cycle: SettlementCycle = "daily"
    settlement_timezone: str = "UTC"  # an IANA name: cut-offs fall at local midnight
    scheduler_enabled: bool = True
    scheduler_interval_s: int = 60
    db_pool_size: int = 10
    db_pool_timeout_s: int = 10
    db_lock_timeout_s: int = 10
    log_level: str = "INFO"
    log_format: LogFormat = "json"
    partner_rate_limit: str = "1000/second"
    operator_rate_limit: str = "100/second"
    member_rate_limit: str = "20/second"
    group_commit_max: int = 64
    group_commit_concurrency: int = 2
    group_commit_fill_min: int = 4
    group_commit_queue_max: int = 1000
    batch_processors: int = 4
    workers: int = 1
    webhooks_allow_http: bool = False
    webhook_backoff_s: float = 30.0
    webhook_retry_window_s: int = 86400
    # Never in a repr or a log line: they decrypt the exchange's webhook signing keys.
    webhook_key_secret: tuple[bytes, ...] = field(default=(), repr=False)
    webhook_key_secret_file: Path | None = None
    account_receivable: str = "1200"
    account_payable: str = "2100"
    account_points_liability: str = "2400"
    account_redemption_margin: str = "4100"
    account_breakage_revenue: str = "4200"
    account_rounding: str = "6990"
    tiers: tuple[tuple[str, int], ...] = (("base", 0), ("silver", 5000), ("gold", 20000))
    transfer_points_max: int = 10_000
    transfer_points_30d_max: int = 50_000
    expiry_reminder_days: tuple[int, ...] = (30, 7)
    trusted_proxies: TrustedProxies = _LOOPBACK_PROXIES

    @property
    def db_connections(self) -> int:
        """The pool's size: `db_pool_size` for requests, and two for each batch processor,
        which holds one while its batch is processing (the batch's lock) and one more
        while it posts a chunk. Busy processors never take a request's connection."""
        return self.db_pool_size + 2 * self.batch_processors

    @property
    def authority(self) -> str:
        """The `@authority` partners sign: host[:port], port only when not the scheme default."""
        return _authority(self.public_url)

    def with_changes(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every `EXCHANGE_*` variable; raise ConfigError on the first bad one."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for variable in VARIABLES:
            raw = env.get(variable.name)
            if raw is None or raw == "":
                continue
            try:
                values[variable.field] = _PARSERS[variable.field](raw)
            except ValueError as exc:
                shown = "(hidden)" if variable.field in _SECRET_FIELDS else repr(raw)
                raise ConfigError(
                    f"{variable.name}={shown} is not valid: {exc}. Accepts {variable.accepts}."
                ) from None
        known = {variable.name for variable in VARIABLES}
        unknown = sorted(name for name in env if name.startswith("EXCHANGE_") and name not in known)
        if unknown:
            raise ConfigError(
                f"Unknown setting {unknown[0]}. Known settings: {', '.join(sorted(known))}."
            )
        if "webhook_key_secret" in values and "webhook_key_secret_file" in values:
            raise ConfigError(
                "Set EXCHANGE_WEBHOOK_KEY_SECRET or EXCHANGE_WEBHOOK_KEY_SECRET_FILE, not both."
            )
        return cls(**values)


# Settings whose value must never be echoed in an error message.
_SECRET_FIELDS = frozenset({"webhook_key_secret"})

_PARSERS: dict[str, Any] = {
    "database_url": _database_url,
    "data_dir": Path,
    "public_url": _public_url,
    "points_ttl_days": lambda v: _positive_int(v, high=36500),
    "settlement_cycle": _choice(get_args(SettlementCycle)),
    "settlement_timezone": _timezone,
    "scheduler_enabled": _boolean,
    "scheduler_interval_s": lambda v: _positive_int(v, high=86400),
    "db_pool_size": lambda v: _positive_int(v, high=1000),
    "db_pool_timeout_s": lambda v: _positive_int(v, high=3600),
    "db_lock_timeout_s": lambda v: _positive_int(v, high=3600),
    "log_level": _choice(("DEBUG", "INFO", "WARNING", "ERROR")),
    "log_format": _choice(get_args(LogFormat)),
    "partner_rate_limit": _rate_limit,
    "operator_rate_limit": _rate_limit,
    "member_rate_limit": _rate_limit,
    "group_commit_max": lambda v: _positive_int(v, high=1000),
    "group_commit_concurrency": lambda v: _positive_int(v, high=100),
    "group_commit_fill_min": lambda v: _positive_int(v, high=1000),
    "group_commit_queue_max": lambda v: _positive_int(v, high=100_000),
    "batch_processors": lambda v: _positive_int(v, high=64),
    "workers": lambda v: _positive_int(v, high=64),
    "webhooks_allow_http": _boolean,
    "webhook_backoff_s": lambda v: float(_positive_int(v, high=3600)),
    "webhook_retry_window_s": lambda v: _positive_int(v, high=30 * 86400),
    "webhook_key_secret": parse_key_secrets,
    "webhook_key_secret_file": _key_secret_file,
    "account_receivable": _account_code,
    "account_payable": _account_code,
    "account_points_liability": _account_code,
    "account_redemption_margin": _account_code,
    "account_breakage_revenue": _account_code,
    "account_rounding": _account_code,
    "tiers": _tiers,
    "transfer_points_max": lambda v: _positive_int(v, high=10**12),
    "transfer_points_30d_max": lambda v: _positive_int(v, high=10**12),
    "expiry_reminder_days": _reminder_days,
    "trusted_proxies": TrustedProxies.parse,
}

VARIABLES: tuple[Variable, ...] = (
    Variable(
        "EXCHANGE_DATABASE_URL",
        "database_url",
        "(unset)",
        "a postgresql:// URL",
        "PostgreSQL to use. Unset: start the embedded PostgreSQL in EXCHANGE_DATA_DIR.",
    ),
    Variable(
        "EXCHANGE_DATA_DIR",
        "data_dir",
        ".exchange-data",
        "a directory path",
        "Where the embedded PostgreSQL keeps its data (kept across restarts).",
    ),
    Variable(
        "EXCHANGE_PUBLIC_URL",
        "public_url",
        "http://127.0.0.1:8000",
        "an http(s) URL",
        "The URL partners call; its host[:port] is the @authority they sign. Unset, "
        "`exchange serve` uses http://127.0.0.1:<--port>.",
    ),
    Variable(
        "EXCHANGE_POINTS_TTL_DAYS",
        "points_ttl_days",
        "1095",
        "an integer 1-36500",
        "Default lifetime of earned points; promotional expiry may only be earlier.",
    ),
    Variable(
        "EXCHANGE_SETTLEMENT_CYCLE",
        "settlement_cycle",
        "daily",
        "daily, weekly, monthly",
        "Automatic settlement period, cut at local midnight in EXCHANGE_SETTLEMENT_TIMEZONE "
        "(weeks start on Monday).",
    ),
    Variable(
        "EXCHANGE_SETTLEMENT_TIMEZONE",
        "settlement_timezone",
        "UTC",
        "an IANA time zone name",
        "Where settlement cut-offs fall at local midnight (Europe/Riga: 22:00 UTC in winter, "
        "21:00 UTC in summer). Times on the wire stay UTC.",
    ),
    Variable(
        "EXCHANGE_SCHEDULER_ENABLED",
        "scheduler_enabled",
        "true",
        "true or false",
        "Run the expiry sweep and scheduled settlement inside the server.",
    ),
    Variable(
        "EXCHANGE_SCHEDULER_INTERVAL_S",
        "scheduler_interval_s",
        "60",
        "an integer 1-86400",
        "How often the scheduler wakes to look for due work.",
    ),
    Variable(
        "EXCHANGE_DB_POOL_SIZE",
        "db_pool_size",
        "10",
        "an integer 1-1000",
        "Database connections per server process for requests (the pool is bounded; no "
        "overflow); each batch processor adds two of its own.",
    ),
    Variable(
        "EXCHANGE_DB_POOL_TIMEOUT_S",
        "db_pool_timeout_s",
        "10",
        "an integer 1-3600",
        "How long a request waits for a free connection (or to connect, at most 10 s) before 503.",
    ),
    Variable(
        "EXCHANGE_DB_LOCK_TIMEOUT_S",
        "db_lock_timeout_s",
        "10",
        "an integer 1-3600",
        "How long a statement waits for a row another database session holds locked before "
        "the request gets a 503 (a stuck session never hangs the exchange).",
    ),
    Variable(
        "EXCHANGE_LOG_LEVEL",
        "log_level",
        "INFO",
        "DEBUG, INFO, WARNING, ERROR",
        "Minimum level of log lines.",
    ),
    Variable(
        "EXCHANGE_LOG_FORMAT",
        "log_format",
        "json",
        "json or console",
        "JSON lines (one object per line, with request_id) or human-readable console.",
    ),
    Variable(
        "EXCHANGE_PARTNER_RATE_LIMIT",
        "partner_rate_limit",
        "1000/second",
        "limits such as 1000/second;50000/minute",
        "Requests allowed per partner key, for the whole service on this host (over it: 429 "
        "and Retry-After).",
    ),
    Variable(
        "EXCHANGE_OPERATOR_RATE_LIMIT",
        "operator_rate_limit",
        "100/second",
        "limits such as 100/second",
        "Requests allowed per operator token, for the whole service on this host.",
    ),
    Variable(
        "EXCHANGE_MEMBER_RATE_LIMIT",
        "member_rate_limit",
        "20/second",
        "limits such as 20/second",
        "Requests allowed per member token, for the whole service on this host.",
    ),
    Variable(
        "EXCHANGE_GROUP_COMMIT_MAX",
        "group_commit_max",
        "64",
        "an integer 1-1000",
        "Most postings committed together in one database transaction.",
    ),
    Variable(
        "EXCHANGE_GROUP_COMMIT_CONCURRENCY",
        "group_commit_concurrency",
        "2",
        "an integer 1-100",
        "Posting transactions in flight per server process; fewer means bigger batches.",
    ),
    Variable(
        "EXCHANGE_GROUP_COMMIT_FILL_MIN",
        "group_commit_fill_min",
        "4",
        "an integer 1-1000",
        "Postings that must be waiting before another transaction starts while one is in "
        "flight; fewer wait for it to end and go together.",
    ),
    Variable(
        "EXCHANGE_GROUP_COMMIT_QUEUE_MAX",
        "group_commit_queue_max",
        "1000",
        "an integer 1-100000",
        "Postings waiting for a batch, per server process; beyond it: 503 and Retry-After.",
    ),
    Variable(
        "EXCHANGE_BATCH_PROCESSORS",
        "batch_processors",
        "4",
        "an integer 1-64",
        "Batch files processed at once per server process. Each adds two database "
        "connections to the process's pool (its batch's lock and the chunk it posts), on top "
        "of EXCHANGE_DB_POOL_SIZE.",
    ),
    Variable(
        "EXCHANGE_WORKERS",
        "workers",
        "1",
        "an integer 1-64",
        "Server processes sharing the rate limits (each enforces 1/N of them); "
        "`exchange serve --workers N` sets it.",
    ),
    Variable(
        "EXCHANGE_WEBHOOKS_ALLOW_HTTP",
        "webhooks_allow_http",
        "false",
        "true or false",
        "Accept http:// webhook URLs on loopback hosts (for development); else https:// only.",
    ),
    Variable(
        "EXCHANGE_WEBHOOK_BACKOFF_S",
        "webhook_backoff_s",
        "30",
        "an integer 1-3600",
        "Wait before the first retry of a failed webhook delivery; doubled at each attempt.",
    ),
    Variable(
        "EXCHANGE_WEBHOOK_RETRY_WINDOW_S",
        "webhook_retry_window_s",
        "86400",
        "an integer 1-2592000",
        "How long a webhook delivery is retried before it is marked failed.",
    ),
    Variable(
        "EXCHANGE_WEBHOOK_KEY_SECRET",
        "webhook_key_secret",
        "(unset)",
        "base64 32-byte keys, comma-separated (openssl rand -base64 32)",
        "Key-encryption keys (AES-256-GCM) of the exchange's webhook signing keys: the "
        "first encrypts, all decrypt (rotation). Unset with an external database: no "
        "signing key is made or used, events wait; with the embedded one: a development "
        "key in EXCHANGE_DATA_DIR.",
    ),
    Variable(
        "EXCHANGE_WEBHOOK_KEY_SECRET_FILE",
        "webhook_key_secret_file",
        "(unset)",
        "a file path",
        "A file holding EXCHANGE_WEBHOOK_KEY_SECRET's keys, one per line (a mounted "
        "secret); read at start. Not together with EXCHANGE_WEBHOOK_KEY_SECRET.",
    ),
    Variable(
        "EXCHANGE_ACCOUNT_RECEIVABLE",
        "account_receivable",
        "1200",
        "an account code (1-32 characters)",
        "Journal account of partner receivables (what partners owe; per-partner sub-ledger).",
    ),
    Variable(
        "EXCHANGE_ACCOUNT_PAYABLE",
        "account_payable",
        "2100",
        "an account code (1-32 characters)",
        "Journal account of partner payables (what the operator owes partners).",
    ),
    Variable(
        "EXCHANGE_ACCOUNT_POINTS_LIABILITY",
        "account_points_liability",
        "2400",
        "an account code (1-32 characters)",
        "Journal account of the points liability, carried at issue price.",
    ),
    Variable(
        "EXCHANGE_ACCOUNT_REDEMPTION_MARGIN",
        "account_redemption_margin",
        "4100",
        "an account code (1-32 characters)",
        "Journal account of the redemption margin (issue value - redemption credit).",
    ),
    Variable(
        "EXCHANGE_ACCOUNT_BREAKAGE_REVENUE",
        "account_breakage_revenue",
        "4200",
        "an account code (1-32 characters)",
        "Journal account of breakage revenue (expired points at issue price).",
    ),
    Variable(
        "EXCHANGE_ACCOUNT_ROUNDING",
        "account_rounding",
        "6990",
        "an account code (1-32 characters)",
        "Journal account of rounding differences when a net is rounded to the minor unit.",
    ),
    Variable(
        "EXCHANGE_TIERS",
        "tiers",
        "base:0,silver:5000,gold:20000",
        "name:points,... ascending from 0",
        "Member tiers by qualifying points (earned in the trailing 365 days, net of reversals).",
    ),
    Variable(
        "EXCHANGE_TRANSFER_MAX_POINTS",
        "transfer_points_max",
        "10000",
        "an integer 1-10^12",
        "Most points one member-to-member transfer may move.",
    ),
    Variable(
        "EXCHANGE_TRANSFER_MAX_POINTS_30D",
        "transfer_points_30d_max",
        "50000",
        "an integer 1-10^12",
        "Most points a member may transfer out in any 30 days.",
    ),
    Variable(
        "EXCHANGE_EXPIRY_REMINDER_DAYS",
        "expiry_reminder_days",
        "30,7",
        "integers 1-3650, comma-separated",
        "Days before expiry at which member.points_expiring events are written.",
    ),
    Variable(
        "EXCHANGE_TRUSTED_PROXIES",
        "trusted_proxies",
        "127.0.0.1,::1",
        "IP addresses or CIDR networks, comma-separated, or none",
        "Reverse proxies whose X-Forwarded-For is believed: the client is the rightmost "
        "entry that is not one of them (/metrics' loopback rule, the console's sign-in "
        "limit). none: the socket peer is always the client. See docs/operations.md.",
    ),
)

# Every Settings field must be documented by exactly one variable.
_documented = {variable.field for variable in VARIABLES}
_declared = {f.name for f in fields(Settings)}
if _documented != _declared:  # pragma: no cover - a programming error caught at import
    raise RuntimeError(f"Settings and VARIABLES disagree: {_documented ^ _declared}")
