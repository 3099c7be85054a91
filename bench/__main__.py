"""``python -m bench``: run the benches, print a table, write bench/results/latest.json and .md."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback
from pathlib import Path

BENCHES = (
    "receiver", "end_to_end", "resend", "paging", "storm", "breaker", "backup", "durability",
    "slack_click", "console",
)
# Benches whose api and worker trees are sampled for peak RSS (bench.rss) from here;
# the storm samples its own.
RSS_DURING = ("end_to_end",)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short smoke run (seconds, not minutes); writes results/quick.json",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=BENCHES,
        metavar="NAME",
        help=f"run only this bench (repeatable): {', '.join(BENCHES)}",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        help="INCIDENT_LOG_LEVEL and Celery --loglevel for api and workers",
    )
    parser.add_argument(
        "--no-install",
        action="store_true",
        help="do not apt-get install wrk when missing (use the Python generator)",
    )
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print the table as Markdown (for the README); the .md file is written either way",
    )
    parser.add_argument("--output", help="results file name under bench/results/")
    parser.add_argument("--label", default="", help="a note about this run, kept in the JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bench import backup, breaker, durability, end_to_end, loadgen, paging, receiver, report
    from bench import console
    from bench import resend
    from bench import rss, slack_click, storm
    from bench.noise import BackgroundLoad, cpu_speed_index
    from bench.stack import Stack

    selected = args.only or list(BENCHES)
    started = time.monotonic()
    results: dict = {
        "machine": report.machine(),
        "config": {
            "label": args.label,
            "quick": args.quick,
            "only": selected,
            "log_level": args.log_level,
            "log_format": "json",
            "auth": "bearer token on /webhooks/alertmanager",
        },
    }
    needs_wrk = {"receiver", "durability", "console"} & set(selected)
    wrk = loadgen.ensure_wrk(install=not args.no_install) if needs_wrk else None
    stack = Stack(log_level=args.log_level)
    background = BackgroundLoad()
    background.start()
    failed = False
    try:
        print(f"bench: starting PostgreSQL and Redis in {stack.workdir}", flush=True)
        stack.start()
        background.postgres_pid = stack.postgres_pid
        results["config"]["embedded"] = stack.embedded
        runners = {
            "receiver": lambda: receiver.run(stack, quick=args.quick, wrk=wrk),
            "end_to_end": lambda: end_to_end.run(stack, quick=args.quick),
            "resend": lambda: resend.run(stack, quick=args.quick),
            "paging": lambda: paging.run(stack, quick=args.quick),
            "storm": lambda: storm.run(stack, quick=args.quick),
            "breaker": lambda: breaker.run(stack, quick=args.quick),
            "backup": lambda: backup.run(stack, quick=args.quick),
            "durability": lambda: durability.run(stack, quick=args.quick, wrk=wrk),
            "slack_click": lambda: slack_click.run(stack, quick=args.quick),
            "console": lambda: console.run(stack, quick=args.quick, wrk=wrk),
        }
        for name in selected:
            speed = cpu_speed_index()
            t0, mark = time.monotonic(), background.mark()
            print(f"bench: {name} ...", flush=True)
            sampler = rss.RssSampler(stack) if name in RSS_DURING else None
            if sampler is not None:
                sampler.start()
            try:
                results[name] = runners[name]()
            except Exception:
                failed = True
                results[name + "_error"] = traceback.format_exc()
                print(traceback.format_exc(), file=sys.stderr)
            finally:
                peaks = sampler.stop() if sampler is not None else None
            if peaks is not None and isinstance(results.get(name), dict):
                results[name]["rss"] = peaks
            results.setdefault("durations_s", {})[name] = round(time.monotonic() - t0, 1)
            results.setdefault("cpu_during", {})[name] = {
                **background.since(mark),
                "speed_index_before": speed,
                "speed_index_after": cpu_speed_index(),
            }
    finally:
        background.stop()
        leftovers = stack.stop()
    results["leftover_processes"] = leftovers
    results["runtime_s"] = round(time.monotonic() - started, 1)
    results["machine"]["loadavg_at_end"] = os.getloadavg()

    print()
    print(report.markdown(results) if args.markdown else report.table(results))
    name = args.output or ("quick.json" if args.quick else "latest.json")
    path = report.write(_finite(results), name)
    md_path = report.write_markdown(results, str(Path(name).with_suffix(".md")))
    print(f"\nbench: {results['runtime_s']:.0f}s; results in {path} and {md_path}")
    if leftovers:
        print(f"bench: processes left running: {leftovers}", file=sys.stderr)
        return 1
    return 1 if failed else 0


def _finite(value):
    """NaN is not JSON: write null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
