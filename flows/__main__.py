"""Command line: ``freshrec COMMAND`` (the console script) or ``python -m flows COMMAND``; ``--help`` lists the commands.

It parses arguments and prints; what a command reads or writes it asks of the flows
(``flows/commands.py`` for the ledger, the alias history, landing and the demo's home).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

def _settings(**overrides):
    from models.settings import Settings

    return Settings(**overrides)


def cmd_generate(args: argparse.Namespace) -> int:
    from data_checks.sources.synthetic import write_weeks

    settings = _settings()
    landing = Path(args.landing_dir) if args.landing_dir else settings.landing_dir
    if getattr(args, "shop", "orders") == "funnel":
        return _generate_funnel(args, settings, landing)
    written = write_weeks(
        landing,
        range(args.start_week, args.start_week + args.weeks),
        seed=args.seed,
        drift_from_week=args.drift_from_week,
        bad_rows_weeks=tuple(args.bad_rows_week),
        broken_weeks=tuple(args.broken_week),
    )
    for path in written:
        print(path)
    return 0


def _generate_funnel(args: argparse.Namespace, settings, landing: Path) -> int:
    """The funnel shop's own export under <home>/exports/funnel-shop, landed through its mapping."""
    from data_checks.sources import funnel
    from data_checks.sources.mapping import load_mapping, write_landing

    if args.broken_week:
        print("error: --broken-week renames a column of the orders shop; the funnel shop has no such option", file=sys.stderr)
        return 2
    export = settings.home / "exports" / "funnel-shop"
    weeks = range(args.start_week, args.start_week + args.weeks)
    written = funnel.write_weeks(export, weeks, seed=args.seed, drift_from_week=args.drift_from_week, bad_rows_weeks=tuple(args.bad_rows_week))
    events = [path for path in written if path.name.startswith("events-")]
    for path in write_landing(load_mapping(export / funnel.MAPPING_PATH.name), landing, events):
        print(path)
    return 0


def cmd_import_online_retail(args: argparse.Namespace) -> int:
    from data_checks.sources.online_retail import write_landing

    landing = Path(args.landing_dir) if args.landing_dir else _settings().landing_dir
    for path in write_landing(Path(args.path), landing, args.period):
        print(path)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from data_checks.sources.mapping import ConversionError, MappingError, load_mapping, write_landing

    landing = Path(args.landing_dir) if args.landing_dir else _settings().landing_dir
    try:
        written = write_landing(load_mapping(Path(args.mapping)), landing, [Path(f) for f in args.files] or None)
    except (MappingError, ConversionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


def cmd_land(args: argparse.Namespace) -> int:
    """Copy each file into landing/ whole, never over another file, and announce it with a
    `freshrec.batch.landed` event (docs/events.md). Exit status 2 when any file was refused."""
    from data_checks.markup import plain_text
    from flows import commands

    landing = Path(args.landing_dir) if args.landing_dir else _settings().landing_dir
    reports = commands.land(args.files, landing)
    for report in reports:
        landed = report.landed
        if landed is None:
            print(plain_text(f"error: {report.file} is not landed: {report.error}"), file=sys.stderr)
        elif not landed.new:
            print(plain_text(f"{landed.path} is already there with the same content: nothing to do"))
        else:
            print(plain_text(
                f"landed {landed.path} ({landed.size_bytes:,} bytes, sha256 {landed.sha256[:16]})"
                + (f", event {report.event_sent} sent" if report.event_sent else ", no event sent")
            ))
    if not commands.events_configured():
        print("no Prefect API (PREFECT_API_URL) to send events to: the next continuous-training run finds the files", file=sys.stderr)
    return 2 if any(report.landed is None for report in reports) else 0


def cmd_ledger(args: argparse.Namespace) -> int:
    from data_checks.markup import plain_text
    from flows import commands

    settings = _settings()
    if args.retry is not None:
        if not commands.retry_batch(settings, args.retry):
            print(f"error: batch {args.retry} is not failed or parked: nothing to re-open", file=sys.stderr)
            return 2
        print(f"batch {args.retry} re-opened: the next continuous-training run updates on it again")
        return 0
    rows = commands.batches(settings)
    if args.json:
        for row in rows:
            print(json.dumps(row.__dict__, default=str))
        return 0
    table = [("id", "file", "status", "in", "accepted", "quarantined", "update", "model", "reasons")]
    for r in rows:
        reasons = "; ".join(filter(None, [r.reasons, r.update_error and f"update: {r.update_error}"]))
        reasons = reasons if len(reasons) <= 60 else reasons[:57] + "..."
        update = r.decision or "-"
        if r.decision in ("update", "failed", "parked"):
            update += f" ({r.update_attempts}x)"
        table.append((
            str(r.id), r.file_name, r.status, f"{r.rows_in:,}", f"{r.rows_accepted:,}", f"{r.rows_quarantined:,}", update,
            r.consumed_by_version or "-", reasons,
        ))
    _print_table(table)
    totals = [sum(getattr(r, f) for r in rows if r.kind == "interactions") for f in ("rows_in", "rows_accepted", "rows_quarantined")]
    print(f"\ninteraction rows: {totals[0]:,} in = {totals[1]:,} accepted + {totals[2]:,} quarantined")
    stuck = commands.stuck(rows)
    if stuck:
        print(plain_text(f"{len(stuck)} batch(es) whose update failed: " + ", ".join(f"{r.id} {r.file_name} ({r.decision})" for r in stuck)), file=sys.stderr)
    return 0


def _print_table(table: list[tuple[str, ...]]) -> None:
    from data_checks.markup import plain_table

    print("\n".join(plain_table(table)))


def cmd_history(args: argparse.Namespace) -> int:
    """Every move of the champion alias: when, from, to, why and which run."""
    from data_checks.markup import plain_text
    from flows import commands
    from models.settings import redact

    settings = _settings()
    history = commands.alias_history(settings)
    if args.json:
        for move in history.moves:
            print(json.dumps(move.__dict__, default=str))
        return 0
    if not history.moves:
        print(f"no alias moves recorded for {settings.registered_model_name} in {redact(settings.ledger_url)}")
        return 0
    table = [("#", "when (UTC)", "alias", "action", "from", "to", "mlflow run", "why")]
    for m in history.moves:
        table.append((
            str(m.seq), m.moved_at.strftime("%Y-%m-%d %H:%M:%S"), m.alias, m.action, m.from_version or "-", m.to_version,
            (m.mlflow_run_id or "-")[:12], m.reason,
        ))
    _print_table(table)
    if history.stuck:
        print(f"\n{len(history.stuck)} batch(es) no version was trained on, their update failed (freshrec ledger):")
        for b in history.stuck:
            print("  " + plain_text(f"{b.id} {b.file_name}: {b.decision} after {b.update_attempts} attempt(s): {b.update_error}"))
    if history.disagrees:
        print(
            f"\nwarning: the registry has @{settings.champion_alias} = {history.registry_version}, but the last "
            f"recorded move is to version {history.recorded_version}: a run was stopped in the middle of the move, or the alias "
            f"was moved outside freshrec. The next flow run (its reconcile-registry task) moves it to version "
            f"{history.recorded_version}; to serve another version, `freshrec rollback --to VERSION --reason ...`.",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from flows.rollback import rollback

    return _print_message(rollback(reason=args.reason, to_version=args.to, settings=_settings(), return_state=True))


def cmd_backtest(args: argparse.Namespace) -> int:
    from flows.backtest import backtest

    state = backtest(
        source=args.source, period=args.period, data_path=args.data, policies=args.policy or None,
        include_peers=not args.no_peers, include_als=not args.no_als, out=args.out, synthetic_weeks=args.weeks,
        settings=_settings(), return_state=True,
    )
    return _print_message(state)


def cmd_servers(args: argparse.Namespace) -> int:
    from flows.servers import MlflowAuth, run

    auth = None
    if args.mlflow_auth:
        try:
            auth = MlflowAuth.from_environment()
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    state = Path(args.state_dir) if args.state_dir else _settings().home / "servers"
    return run(state, args.prefect_port, args.mlflow_port, args.mlflow_backend_store_uri, auth)


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.serve import run

    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    return run(_settings(), args.host, args.port, args.workers)


def cmd_settings_reference(args: argparse.Namespace) -> int:
    from models.settings import settings_reference

    print(settings_reference(), end="")
    return 0


def _print_message(state) -> int:
    """A flow's final message on stdout, or its error on stderr with exit status 1."""
    if not state.is_completed():
        print(f"error: {state.message}", file=sys.stderr)
        return 1
    print(state.message)
    return 0


def _run_flow(flow_fn, as_json: bool, settings=None, **parameters) -> int:
    from flows import commands

    state = flow_fn(settings=settings or _settings(), return_state=True, **parameters)
    if not state.is_completed():
        print(f"error: {state.message}", file=sys.stderr)
        return 1
    outcomes = state.result()
    if as_json:
        for outcome in commands.outcome_json(outcomes):
            print(json.dumps(outcome))
    else:
        print(commands.outcome_table(outcomes))
        print(f"\n{state.message}")
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from flows.bootstrap import bootstrap

    return _run_flow(bootstrap, args.json, getattr(args, "settings", None), until=args.until)


def cmd_run(args: argparse.Namespace) -> int:
    from flows.continuous_training import continuous_training

    return _run_flow(continuous_training, args.json, getattr(args, "settings", None))


def cmd_demo(args: argparse.Namespace) -> int:
    """Reset the demo's state, then: two weeks land, bootstrap, six more land, run."""
    from flows import commands

    home = _settings().home
    try:
        if commands.reset_demo_home(home):
            print(f"Resetting the demo state in {home}")
    except commands.HomeInUse as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    generate = argparse.Namespace(landing_dir=None, seed=args.seed, drift_from_week=6, bad_rows_week=[3], broken_week=[4])
    # The demo writes whole files into landing/ (each renamed into place) and runs at once.
    landed_whole = _settings(landing_settle_seconds=0)
    print("\n== 1. Two weeks of orders land; bootstrap trains the first champion")
    cmd_generate(argparse.Namespace(**vars(generate), start_week=0, weeks=2))
    if cmd_bootstrap(argparse.Namespace(json=False, until=None, settings=landed_whole)):
        return 1
    print("\n== 2. Six more weeks land (week 3 has bad rows, week 4 a renamed column, week 6 drifts);")
    print("==    continuous training processes them in order")
    cmd_generate(argparse.Namespace(**vars(generate), start_week=2, weeks=6))
    return cmd_run(argparse.Namespace(json=False, settings=landed_whole))


def _utc_time(text: str):
    import pandas as pd

    stamp = pd.Timestamp(text)
    return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")).to_pydatetime()


def main(argv: list[str] | None = None) -> int:
    prog = "python -m flows" if Path(sys.argv[0]).name == "__main__.py" else "freshrec"
    parser = argparse.ArgumentParser(prog=prog, description="freshrec: keep a recommender fresh.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write synthetic weekly batches into the landing area")
    gen.add_argument("--shop", choices=("orders", "funnel"), default="orders",
                     help="orders: purchase lines in the contract; funnel: views, carts and purchases in the shop's own export, landed through its mapping")
    gen.add_argument("--weeks", type=int, default=4, help="number of weekly files (default 4)")
    gen.add_argument("--start-week", type=int, default=0, help="first week number (default 0)")
    gen.add_argument("--seed", type=int, default=0, help="the shop's seed: same seed, same files")
    gen.add_argument("--drift-from-week", type=int, default=None, help="inject new items, a popularity and a price shift from this week on")
    gen.add_argument("--bad-rows-week", type=int, action="append", default=[], help="spoil 5%% of this week's rows (repeatable)")
    gen.add_argument("--broken-week", type=int, action="append", default=[], help="rename a required column in this week's file (repeatable)")
    gen.add_argument("--landing-dir", default=None, help="where to write (default: the settings' landing_dir)")
    gen.set_defaults(func=cmd_generate)

    boot = sub.add_parser("bootstrap", help="validate the landed files and train the first champion")
    boot.add_argument("--json", action="store_true", help="print one JSON object per batch")
    boot.add_argument(
        "--until", type=_utc_time, default=None,
        help="train only on batches whose events all precede this UTC date or time (ISO 8601); later batches wait for `run`",
    )
    boot.set_defaults(func=cmd_bootstrap)

    run = sub.add_parser("run", help="one continuous-training run over all new landing files")
    run.add_argument("--json", action="store_true", help="print one JSON object per batch")
    run.set_defaults(func=cmd_run)

    retail = sub.add_parser("import-online-retail", help="map the UCI Online Retail file to landing files, uncleaned")
    retail.add_argument("path", help="online_retail.csv.gz (see ../shared/data/README.md)")
    retail.add_argument("--landing-dir", default=None, help="where to write (default: the settings' landing_dir)")
    retail.add_argument("--period", choices=("month", "week", "day"), default="month", help="one landing file per period")
    retail.set_defaults(func=cmd_import_online_retail)

    conv = sub.add_parser("convert", help="map a shop's export to landing files with a mapping file (docs/mappings.md)")
    conv.add_argument("mapping", help="the mapping file (.yaml or .toml), e.g. docs/mappings/retailrocket.yaml")
    conv.add_argument("files", nargs="*", metavar="FILE", help="convert these files instead of the ones the mapping's glob matches")
    conv.add_argument("--landing-dir", default=None, help="where to write (default: the settings' landing_dir)")
    conv.set_defaults(func=cmd_convert)

    land = sub.add_parser("land", help="copy files into landing/ whole, never over another, and send a freshrec.batch.landed event each")
    land.add_argument("files", nargs="+", metavar="FILE", help="interactions*.csv|parquet or catalog*.csv|parquet files")
    land.add_argument("--landing-dir", default=None, help="where to land (default: the settings' landing_dir)")
    land.set_defaults(func=cmd_land)

    led = sub.add_parser("ledger", help="print the ledger: every landed file and what became of it")
    led.add_argument("--json", action="store_true", help="one JSON object per file")
    led.add_argument("--retry", type=int, default=None, metavar="ID", help="re-open a failed or parked batch for the next run")
    led.set_defaults(func=cmd_ledger)

    hist = sub.add_parser("history", help="print every move of the champion alias: when, from, to, why, which run")
    hist.add_argument("--json", action="store_true", help="one JSON object per move")
    hist.set_defaults(func=cmd_history)

    back = sub.add_parser("rollback", help="move the champion back to the version it replaced, and record why")
    back.add_argument("--reason", required=True, help="why: kept in the audit trail (python -m flows history)")
    back.add_argument("--to", default=None, help="roll back to this version instead of the one the champion replaced")
    back.set_defaults(func=cmd_rollback)

    bt = sub.add_parser("backtest", help="replay history through every update policy and the peers; write the report")
    bt.add_argument("--source", choices=("online-retail", "synthetic", "funnel"), default="online-retail",
                    help="the UCI file, the synthetic purchase shop, or the funnel shop of views, carts and purchases")
    bt.add_argument("--period", choices=("month", "week"), default="month", help="one batch per period (online-retail)")
    bt.add_argument("--data", default=None, help="the UCI Online Retail file, online_retail.csv.gz (needed with --source online-retail)")
    bt.add_argument("--policy", action="append", choices=("never", "retrain", "incremental", "triggered"), help="only these policies (repeatable; default all)")
    bt.add_argument("--no-peers", action="store_true", help="leave the peers out")
    bt.add_argument("--no-als", action="store_true", help="leave ALS out (it needs the dev dependency `implicit`)")
    bt.add_argument("--weeks", type=int, default=8, help="weeks of a generated shop, the first two for the bootstrap (default 8)")
    bt.add_argument("--out", default=None, help="report path (default: <home>/backtest/<source>/report.json; a .png beside it)")
    bt.set_defaults(func=cmd_backtest)

    srv = sub.add_parser("servers", help="a Prefect server and an MLflow tracking server on loopback (Ctrl-C stops both)")
    srv.add_argument("--prefect-port", type=int, default=4200)
    srv.add_argument("--mlflow-port", type=int, default=5000)
    srv.add_argument("--state-dir", default=None, help="their databases, artifacts and logs (default: <home>/servers)")
    srv.add_argument(
        "--mlflow-backend-store-uri", default=os.environ.get("MLFLOW_BACKEND_STORE_URI"),
        help="MLflow's database as a SQLAlchemy URL, e.g. postgresql+psycopg2://user@host/mlflow (default: MLFLOW_BACKEND_STORE_URI, "
        "which keeps a password out of the process list, else SQLite under the state dir)",
    )
    srv.add_argument(
        "--mlflow-auth", action="store_true",
        help="MLflow's basic-auth app: needs MLFLOW_AUTH_ADMIN_PASSWORD, and MLFLOW_TRACKING_USERNAME/_PASSWORD for the flows' user",
    )
    srv.set_defaults(func=cmd_servers)

    serve = sub.add_parser("serve", help="answer recommendations over HTTP from the champion, following the alias as it moves")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--workers", type=int, default=1, help="processes answering, each with its own copy of the model (default 1)")
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="reset the demo state, generate, bootstrap and run (what `make demo` does)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    ref = sub.add_parser("settings-reference", help="print the settings reference (docs/settings.md) in Markdown")
    ref.set_defaults(func=cmd_settings_reference)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
