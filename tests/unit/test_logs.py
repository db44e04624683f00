"""Console log lines cannot be forged or disguised by request data."""

from __future__ import annotations

from exchange.logs import escape_controls


def test_controls_separators_and_bidi_are_escaped_in_every_value_but_a_traceback() -> None:
    """structlog's ConsoleRenderer repr()s values only in recent versions (26.x does,
    24.4, our lower bound, prints them raw): the escaping is ours, whatever the version."""
    event = {
        "event": "request",
        "path": "/x\n2026-11-23T10:00:00Z [info     ] request status=200",
        "reference": "order-\u202e1\u2028",
        "status": 404,
        "exception": "Traceback (most recent call last):\n  File ...",
    }
    escaped = escape_controls(None, "info", dict(event))
    assert escaped["path"] == "/x\\n2026-11-23T10:00:00Z [info     ] request status=200"
    assert escaped["reference"] == "order-\\u202e1\\u2028"
    assert escaped["status"] == 404
    assert escaped["exception"] == event["exception"]
    plain = {"event": "request", "path": "/v1/earn", "name": "Café"}
    assert escape_controls(None, "info", dict(plain)) == plain
