"""``make bench``: run every stage and print one table (figure, target, measured, bare limit
measured in the same run, ratio to it, verdict).

    .venv/bin/python -m bench.run                  # full run (10-15 minutes)
    .venv/bin/python -m bench.run --quick          # smaller sizes, a smoke run
    .venv/bin/python -m bench.run --only ingest --only push
    .venv/bin/python -m bench.run --set memory_events=200000 --set rt_seconds=30

Uses the deployment profile ``bench`` (databases ``bench_*`` on the embedded PostgreSQL,
Airflow home ``.mc/airflow-bench``) and free ports, so it never touches the demo
(``make run``) or the test databases; logs and a JSON copy of the results go to
``.mc/bench/<timestamp>/``. It asserts nothing: a missed target is a row that says
MISSED, and the exit code is non-zero only when a stage could not run at all.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, fields
from datetime import UTC, datetime

from bench.core import (
    Context,
    Result,
    Sizes,
    free_port,
    json_dump,
    log,
    machine_line,
    new_work_dir,
    planned_rows,
    render_table,
)

Stage = Callable[[Context], list[Result]]


def _stages() -> dict[str, Stage]:
    from bench import (
        attachments_stage,
        cleanup_stage,
        http_stages,
        pipeline,
        realtime,
        reports,
        slow_relay,
        soap_stage,
        webhooks_stage,
    )

    return {
        "ingest": http_stages.ingest,
        "soap_ingest": soap_stage.soap_ingest,
        "push": http_stages.push,
        "split_link": pipeline.split_link,
        "deliver": pipeline.deliver,
        "attachments": attachments_stage.attachments,
        "status": pipeline.update_status,
        "archive": pipeline.archive,
        "reports": reports.reports,
        "realtime": realtime.realtime,
        "memory": realtime.memory,
        "slow_relay": slow_relay.slow_relay,
        "cleanup": cleanup_stage.cleanup,
        "webhooks": webhooks_stage.webhooks,
    }


STAGE_NAMES = ("ingest", "soap_ingest", "push", "split_link", "deliver", "attachments",
               "status", "archive", "reports", "realtime", "memory", "slow_relay", "cleanup",
               "webhooks")
# Run order: the API-server stages, the in-process ones, then the Airflow standalone ones
# (memory first: it starts standalone; realtime measures its bare loops without Airflow,
# then restarts it; slow_relay reuses that standalone). The table keeps the order
# (STAGE_NAMES).
RUN_ORDER = ("ingest", "soap_ingest", "push", "split_link", "deliver", "attachments",
             "status", "archive", "webhooks", "reports", "memory", "realtime", "slow_relay",
             "cleanup")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"stages, in order: {', '.join(STAGE_NAMES)}")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", const="quick", dest="size",
                      help="smaller sizes everywhere (a few minutes)")
    size.add_argument("--tiny", action="store_const", const="tiny", dest="size",
                      help="the smallest sizes (the smoke test's)")
    parser.add_argument("--only", action="append", default=[], metavar="STAGE",
                        help="run only this stage (repeatable, or comma-separated)")
    parser.add_argument("--skip", action="append", default=[], metavar="STAGE",
                        help="do not run this stage (repeatable, or comma-separated)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override one size: " + ", ".join(f.name for f in fields(Sizes)))
    parser.add_argument("--profile", default="bench",
                        help="deployment profile (databases <profile>_*), default bench")
    parser.add_argument("--no-setup", action="store_true",
                        help="skip `mc setup` for the profile (databases already prepared)")
    args = parser.parse_args(argv)
    args.size = args.size or "full"

    def names(values: list[str]) -> list[str]:
        chosen = [n.strip() for value in values for n in value.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in STAGE_NAMES]
        if unknown:
            parser.error(f"unknown stage {unknown[0]!r}; stages: {', '.join(STAGE_NAMES)}")
        return chosen

    args.only, args.skip = names(args.only), names(args.skip)
    sizes = Sizes.preset(args.size)
    types = {f.name: f.type for f in fields(Sizes)}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in types or not value:
            parser.error(f"--set {item!r}: expected NAME=VALUE with NAME one of "
                         f"{', '.join(types)}")
        try:
            number = float(value.replace("_", ""))
            setattr(sizes, name, int(number) if types[name] in (int, "int") else number)
        except ValueError:
            parser.error(f"--set {item!r}: {value!r} is not a number")
    args.sizes = sizes
    return args


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Set-up chatter (ours and our subprocesses') goes to stderr; stdout is the table."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    selected = [n for n in STAGE_NAMES if (not args.only or n in args.only)
                and n not in args.skip]
    # Free ports before the deployment is built: it reads them from the environment.
    os.environ["MC_API_PORT"] = str(free_port())
    os.environ["MC_SMTP_PORT"] = str(free_port())
    os.environ["MC_DEPLOYMENT_PROFILE"] = args.profile
    from mc_local.launcher import prepare
    from mc_local.localenv import deployment

    dep = deployment(args.profile)
    # The embedded PostgreSQL is stopped at the end unless it was already running (like
    # `make test`): a benchmark leaves no server behind.
    pg_was_running = dep.uses_embedded and dep.embedded.is_ready()
    work_dir = new_work_dir()
    ctx = Context(dep, args.sizes, work_dir, smtp_port=dep.smtp_port,
                  null_smtp_port=free_port())

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    load_before = os.getloadavg()
    log(f"profile {args.profile}, sizes {args.size}, stages {', '.join(selected)}; "
        f"logs in {work_dir}")
    by_stage: dict[str, list[Result]] = {}
    errors = 0
    try:
        if args.no_setup:  # the stages link events to the repository's templates
            from mc_local.launcher import publish_to_deployment

            log(publish_to_deployment(dep))
        else:
            with stdout_to_stderr():
                prepare(dep)
        stages = _stages()
        for name in RUN_ORDER:
            planned = planned_rows(args.sizes)[name]
            if name not in selected:
                by_stage[name] = [Result(f, t, None, "", None, state="skipped")
                                  for f, t in planned]
                continue
            log(f"stage {name} ...")
            stage_started = time.monotonic()
            try:
                rows = stages[name](ctx)
            except Exception as exc:  # one broken stage must not hide the others
                errors += 1
                traceback.print_exc()
                reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}" \
                    if str(exc).strip() else type(exc).__name__
                rows = [Result(f, t, None, "", None, state="ERROR",
                               note=reason if i == 0 else "") for i, (f, t) in
                        enumerate(planned)]
            log(f"stage {name} done in {time.monotonic() - stage_started:.0f}s")
            by_stage[name] = rows
    finally:
        ctx.stop_all()
        if dep.uses_embedded and not pg_was_running:
            dep.embedded.stop()
    results = [row for name in STAGE_NAMES for row in by_stage.get(name, [])]
    load_after = os.getloadavg()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\nMessage Center benchmark, {stamp}, {machine_line()}")
    print(f"sizes: {args.size}; load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after; {time.monotonic() - started:.0f}s in all\n")
    print(render_table(results), flush=True)
    json_dump(work_dir / "results.json", {
        "date": stamp, "machine": machine_line(), "sizes": asdict(args.sizes),
        "results": [asdict(r) for r in results]})
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
