"""Tools around the exchange, not part of it: the benchmark and the demo.

    bench/        `exchange bench` (end to end against pgbench) and `exchange bench settlement`
    demo.py       `exchange demo`: a simulated week of trading through the signed API
    demo_cli.py   the `exchange demo` command and its tables

The server never imports this package (tests/test_architecture.py checks it); the command
line registers the commands lazily (`exchange.cli.TOOLS`), so no other command loads them.
Their extra dependencies are the optional `[tools]` extra, which `[dev]` includes.
"""

__all__: list[str] = []
