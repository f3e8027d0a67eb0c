"""Command line: python -m flows {generate,bootstrap,run,demo} [--help]."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

DEMO_MARKER = "DEMO"


def _settings():
    from flows.settings import Settings

    return Settings()


def cmd_generate(args: argparse.Namespace) -> int:
    from data_checks.sources.synthetic import write_weeks

    settings = _settings()
    landing = Path(args.landing_dir) if args.landing_dir else settings.landing_dir
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


def _run_flow(flow_fn, as_json: bool, **parameters) -> int:
    from tasks.report import format_table

    state = flow_fn(settings=_settings(), return_state=True, **parameters)
    if not state.is_completed():
        print(f"error: {state.message}", file=sys.stderr)
        return 1
    outcomes = state.result()
    if as_json:
        for outcome in outcomes:
            print(json.dumps(outcome.to_json()))
    else:
        print(format_table(outcomes))
        print(f"\n{state.message}")
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from flows.bootstrap import bootstrap

    return _run_flow(bootstrap, args.json, until=args.until)


def cmd_run(args: argparse.Namespace) -> int:
    from flows.continuous_training import continuous_training

    return _run_flow(continuous_training, args.json)


def cmd_demo(args: argparse.Namespace) -> int:
    """Reset the demo's state, then: two weeks land, bootstrap, six more land, run."""
    settings = _settings()
    home = settings.home
    if home.exists():
        precious = [p.name for p in home.iterdir() if p.name in ("ledger.db", "mlflow.db", "accepted")]
        if precious and not (home / DEMO_MARKER).exists():
            print(
                f"error: {home} holds state that the demo did not create; set FRESHREC_HOME to another "
                "directory for the demo, or move it away",
                file=sys.stderr,
            )
            return 2
        print(f"Resetting the demo state in {home}")
        for entry in home.iterdir():
            if entry.name == "prefect":  # PREFECT_HOME: run history only, and a UI may be reading it
                continue
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    home.mkdir(parents=True, exist_ok=True)
    (home / DEMO_MARKER).write_text("created by `python -m flows demo`; the next demo deletes this directory\n")

    generate = argparse.Namespace(landing_dir=None, seed=args.seed, drift_from_week=6, bad_rows_week=[3], broken_week=[4])
    print("\n== 1. Two weeks of orders land; bootstrap trains the first champion")
    cmd_generate(argparse.Namespace(**vars(generate), start_week=0, weeks=2))
    if cmd_bootstrap(argparse.Namespace(json=False, until=None)):
        return 1
    print("\n== 2. Six more weeks land (week 3 has bad rows, week 4 a renamed column, week 6 drifts);")
    print("==    continuous training processes them in order")
    cmd_generate(argparse.Namespace(**vars(generate), start_week=2, weeks=6))
    return cmd_run(argparse.Namespace(json=False))


def _utc_time(text: str):
    import pandas as pd

    stamp = pd.Timestamp(text)
    return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")).to_pydatetime()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows", description="freshrec: keep a recommender fresh.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write synthetic weekly batches into the landing area")
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

    demo = sub.add_parser("demo", help="reset the demo state, generate, bootstrap and run (what `make demo` does)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
