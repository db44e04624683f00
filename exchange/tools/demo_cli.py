"""`exchange demo`: the command, and how its results are shown (the simulation itself is
`exchange.tools.demo`). Registered lazily by `exchange.cli`."""

from __future__ import annotations

import asyncio
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from exchange.cli_support import run_with_engine, settings_or_exit, using_database
from exchange.db import migrate
from exchange.logs import configure_logging
from exchange.tools import demo
from exchange.verify import verify_ledger

__all__ = [
    "cross_brand_table",
    "demo_command",
    "documents_table",
    "roll_forward_table",
    "statement_table",
]

console = Console()
SERVER_LOG = "server.log"


@click.command("demo")
@click.option("--members", default=200, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--days", default=7, show_default=True, type=click.IntRange(1, 366))
@click.option("--seed", default=42, show_default=True, type=int, help="Same seed, same numbers.")
def demo_command(members: int, days: int, seed: int) -> None:
    """Onboard three partners and trade for a few simulated days through the signed API,
    then settle and show the statements, the cross-brand matrix and the CSV report."""
    settings = settings_or_exit()
    configure_logging("WARNING", "console")
    out_dir = settings.data_dir.resolve() / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / SERVER_LOG
    with using_database(settings, migrated=False) as database, log_path.open("w") as log:
        demo_url = asyncio.run(demo.recreate_demo_database(database.url))
        migrate(demo_url)
        console.print(f"Demo database [bold]{demo.DEMO_DATABASE}[/bold] ready; seed {seed}.")
        demo_settings = settings.with_changes(database_url=demo_url)
        try:
            result = asyncio.run(
                demo.run_demo(demo_settings, members=members, days=days, seed=seed,
                              out_dir=out_dir, console=console, log=log)
            )  # fmt: skip
            report = run_with_engine(demo_settings, verify_ledger)
        finally:
            # Back to the terminal before the file closes (and warnings only, as above).
            configure_logging("WARNING", "console")
    _show_demo(result, report.clean, demo_url)
    console.print(f"Server log: {log_path}", soft_wrap=True)
    if not (result.run["reconciled"] and report.clean):
        raise SystemExit(1)


def _show_demo(result: demo.DemoResult, verified: bool, demo_url: str) -> None:
    activity = Table("what happened", "count", title="Trading")
    for what, count in sorted(result.counts.items()):
        activity.add_row(what, f"{count:,}")
    console.print(activity)
    console.print(statement_table(result.statements))
    console.print(cross_brand_table(result.run))
    controls = result.run["controls"]
    state = "[green]reconciled[/green]" if result.run["reconciled"] else "[red]NOT reconciled[/red]"
    console.print(
        f"Run {result.run['run_id']}: {state}; outstanding {controls['outstanding_start']:,}"
        f" -> {controls['outstanding_end']:,} points "
        f"(issued {controls['issued']:,}, redeemed {controls['redeemed']:,}, "
        f"expired {controls['expired']:,})."
    )
    console.print(
        f"Ledger verify: {'[green]clean[/green]' if verified else '[red]DIFFERENCES[/red]'}"
    )
    console.print(f"CSV report: {result.csv_path}")
    console.print(
        f"Explore it: EXCHANGE_DATABASE_URL='{demo_url}' exchange report settlement latest"
    )
    if result.closing is not None:
        _show_closing(result.closing)


def _show_closing(closing: demo.Closing) -> None:
    """The month-end close: the approved run, what approval issued, the roll-forward."""
    run = closing.approved
    console.print(
        f"Run {run['run_id']} [green]{run['status']}[/green] by {run['approved_by']} "
        f"at {run['approved_at']}."
    )
    console.print(documents_table(closing.documents))
    console.print(roll_forward_table(closing.roll_forward))
    reconciliation = closing.roll_forward["reconciliation"]
    tied = reconciliation["ties_to_run"] and reconciliation["movements_tie_to_controls"]
    console.print(
        f"Roll-forward ties to the run: {'[green]yes[/green]' if tied else '[red]NO[/red]'}"
        f" (outstanding {reconciliation['outstanding_start']:,}"
        f" -> {reconciliation['outstanding_end']:,} points)."
    )


def statement_table(statements: dict[str, dict[str, Any]]) -> Table:
    """One row per partner: what it issued and redeemed, and the money either way."""
    table = Table(title="Settlement statements (net > 0: the partner pays the operator)")
    table.add_column("partner")
    for column in ("issued", "redeemed", "expired", "charge", "credit", "net"):
        table.add_column(column, justify="right")
    table.add_column("ccy")
    for partner_id, statement in statements.items():
        line = statement["line"]
        table.add_row(
            partner_id,
            f"{line['issued_points']:,}",
            f"{line['redeemed_points']:,}",
            f"{line['expired_points']:,}",
            line["issuance_charge"]["amount"],
            line["redemption_credit"]["amount"],
            line["net"]["amount"],
            line["currency"],
        )
    return table


def cross_brand_table(run: dict[str, Any]) -> Table:
    """Issuer x redeemer: points issued by the row's partner and redeemed at the column's."""
    partners = sorted({line["partner_id"] for line in run["lines"]})
    flows = {(f["issuer_id"], f["redeemer_id"]): f["points"] for f in run["cross_brand"]}
    table = Table(title="Cross-brand points (issued by row, redeemed at column)")
    table.add_column("issuer")
    for partner in partners:
        table.add_column(partner, justify="right")
    for issuer in partners:
        table.add_row(issuer, *(f"{flows.get((issuer, redeemer), 0):,}" for redeemer in partners))
    return table


def documents_table(documents: list[dict[str, Any]]) -> Table:
    """The invoices and credit notes the approval issued."""
    table = Table(title="Documents issued at approval")
    for column in ("number", "type", "partner"):
        table.add_column(column)
    table.add_column("total", justify="right")
    table.add_column("due")
    for document in documents:
        total = document["total"]
        table.add_row(
            document["number"],
            document["type"].replace("_", " "),
            document["partner_id"],
            f"{total['amount']} {total['currency']}",
            document["due_date"],
        )
    return table


_FIXED = ("issuer", "issuer_name", "currency", "opening", "closing")


def roll_forward_table(report: dict[str, Any]) -> Table:
    """Points per issuer: opening, each movement that moved anything, closing."""
    issuers = report["issuers"]
    names: dict[str, None] = {}
    for issuer in issuers:
        names.update(
            (name, None)
            for name, figure in issuer.items()
            if name not in _FIXED and isinstance(figure, dict) and "points" in figure
        )
    movements = [n for n in names if any(i.get(n, {}).get("points") for i in issuers)]
    table = Table(title=f"Liability roll-forward to {report['period_end']} (points)")
    table.add_column("issuer")
    for name in ("opening", *movements, "closing"):
        table.add_column(name.replace("_", " "), justify="right")
    for issuer in issuers:
        figures = [issuer[name]["points"] for name in ("opening", *movements, "closing")]
        table.add_row(issuer["issuer"], *(f"{points:,}" for points in figures))
    return table
