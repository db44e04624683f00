"""`exchange bench`: the exchange measured end to end against pgbench (docs/performance.md).

    cli.py        the click group `bench` (registered lazily on `exchange.cli.main`)
    run.py        one run, phase by phase, and the teardown that always happens
    cluster.py    the system under test: embedded PostgreSQL, `exchange serve`, counters
    baseline.py   pgbench's TPC-B-like run on the same PostgreSQL
    setup.py      partners, members and opening balances, built honestly; verification
    presign.py    requests signed before the clock runs (RFC 9421 profile, checked)
    loadgen.py    the lean HTTP/1.1 load generator, a process of its own
    scenarios.py  warm-up, signing, timed windows, per-scenario results
    monitor.py    CPU per process tree and the server's RSS
    report.py     targets, tables, the JSON document
    profiling.py  optional py-spy flame graphs
    settlement.py `exchange bench settlement`: one run over a generated million postings

Nothing here is imported by the server: the package only drives it from outside.
"""

__all__: list[str] = []
