from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from exchange.client_address import TrustedProxies
from exchange.config import VARIABLES, ConfigError, Settings


def test_defaults_without_environment() -> None:
    settings = Settings.from_env({})
    assert settings.database_url is None
    assert settings.data_dir == Path(".exchange-data")
    assert settings.points_ttl_days == 1095
    assert settings.settlement_cycle == "daily"


def test_values_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "EXCHANGE_DATABASE_URL": "postgresql://u:p@db:5432/x",
            "EXCHANGE_POINTS_TTL_DAYS": "30",
            "EXCHANGE_SETTLEMENT_CYCLE": "weekly",
            "EXCHANGE_SCHEDULER_ENABLED": "false",
            "EXCHANGE_PUBLIC_URL": "https://API.Example.com:443/",
        }
    )
    assert settings.points_ttl_days == 30
    assert settings.settlement_cycle == "weekly"
    assert settings.scheduler_enabled is False
    assert settings.authority == "api.example.com"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("EXCHANGE_POINTS_TTL_DAYS", "ten", "EXCHANGE_POINTS_TTL_DAYS='ten' is not valid"),
        ("EXCHANGE_POINTS_TTL_DAYS", "0", "between 1 and 36500"),
        ("EXCHANGE_SETTLEMENT_CYCLE", "hourly", "daily, weekly, monthly"),
        ("EXCHANGE_DATABASE_URL", "mysql://x", "postgresql:// URL"),
        ("EXCHANGE_PUBLIC_URL", "exchange.example", "absolute http(s) URL"),
        ("EXCHANGE_SCHEDULER_ENABLED", "maybe", "true or false"),
        ("EXCHANGE_TRUSTED_PROXIES", "proxy.internal", "'proxy.internal' is not an IP address"),
        ("EXCHANGE_TRUSTED_PROXIES", "10.0.0.1/8", "has host bits set (the network is 10.0.0.0/8)"),
        ("EXCHANGE_TRUSTED_PROXIES", "127.0.0.1,,::1", "'' is not an IP address"),
        ("EXCHANGE_TRUSTED_PROXIES", "127.0.0.1/33", "is not an IP address or CIDR network"),
        ("EXCHANGE_TYPO", "1", "Unknown setting EXCHANGE_TYPO"),
    ],
)
def test_a_bad_value_names_the_variable_and_what_it_accepts(
    name: str, value: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: value})
    assert expected in str(caught.value)
    if name != "EXCHANGE_TYPO":
        assert name in str(caught.value)


def test_trusted_proxies_default_to_loopback_and_take_addresses_networks_or_none() -> None:
    # uvicorn's own default when it read X-Forwarded-For itself: behaviour is kept.
    assert Settings.from_env({}).trusted_proxies.networks == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    configured = Settings.from_env({"EXCHANGE_TRUSTED_PROXIES": " 10.0.0.0/8, 192.0.2.7,fd00::/8"})
    assert configured.trusted_proxies.networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.7/32"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert Settings.from_env({"EXCHANGE_TRUSTED_PROXIES": "none"}).trusted_proxies.networks == ()
    assert Settings.from_env({"EXCHANGE_TRUSTED_PROXIES": "None"}) == Settings(
        trusted_proxies=TrustedProxies()
    )


def test_authority_keeps_a_non_default_port() -> None:
    assert Settings(public_url="http://127.0.0.1:8000").authority == "127.0.0.1:8000"


def test_every_variable_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [variable.name for variable in VARIABLES if variable.name not in readme]
    assert missing == []
