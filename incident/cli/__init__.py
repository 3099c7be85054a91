"""The `incident` command. Imports stay inside each subcommand so `rules check` starts fast."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from incident.config import ConfigurationError, Settings, get_settings

if TYPE_CHECKING:
    from incident.maintenance.jobs import MaintenanceJobs
    from incident.rules import Rules


def _api(args: argparse.Namespace) -> int:
    import uvicorn

    from incident.logging import configure_logging, uvicorn_log_config

    settings = get_settings()
    configure_logging(settings, process="api")
    settings.require_database_url()
    settings.require_broker_url()
    settings.check_receiver_auth()
    settings.check_console()
    uvicorn.run(
        "incident.api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=uvicorn_log_config(),
        proxy_headers=True,
        server_header=False,
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    from incident.cli import worker
    from incident.logging import configure_logging
    from incident.rules import load_rules, require_routing_keys

    settings = get_settings()
    configure_logging(settings, process="worker")
    settings.require_broker_url()
    settings.require_database_url()
    require_routing_keys(load_rules(settings.rules_file).routes)
    extra = list(args.celery_args)
    if not worker.chooses_queues(extra):
        # The default: a node on every queue and one reserved for paging, supervised here.
        try:
            return worker.supervise(extra)
        except worker.WorkerUsageError as exc:
            print(f"incident worker: {exc}", file=sys.stderr)
            return 2

    from incident.worker import app

    app.worker_main(["worker", *extra])
    return 0


def _beat(args: argparse.Namespace) -> int:
    from incident.logging import configure_logging
    from incident.worker import app

    settings = get_settings()
    configure_logging(settings, process="beat")
    settings.require_broker_url()
    app.start(["beat", *args.celery_args])
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from incident.migrate import upgrade

    upgrade(get_settings().require_database_url())
    print("database is at the latest migration")
    return 0


def _dev(args: argparse.Namespace) -> int:
    from incident.dev import run_dev

    return run_dev(state_dir=args.state_dir, host=args.host, port=args.port)


def _rules_check(args: argparse.Namespace) -> int:
    from incident.cli import rules as commands

    return commands.check(args.file or get_settings().rules_file)


def _rules_test(args: argparse.Namespace) -> int:
    from incident.cli import rules as commands

    return commands.explain(args.file, args.payload, as_json=args.json)


def _dead_letters(args: argparse.Namespace) -> int:
    from incident.incidents import deadletters
    from incident.incidents.ingest import INGEST_TASK
    from incident.sharedstate import get_redis
    from incident.worker import app

    client = get_redis()
    if args.action == "list":
        for record in deadletters.parked(client):
            print(f"{record['task_id']}  {record['error']}")
        return 0
    replayed = 0
    while (record := deadletters.take_oldest(client)) is not None:
        if record.get("payload") is None:
            # Too large to keep: only its summary was parked, nothing to replay.
            print(f"not replayable (payload too large to keep): {record.get('summary')}")
            continue
        try:
            app.send_task(INGEST_TASK, kwargs={"payload": record["payload"]},
                          kwargsrepr="{'replay': True}")
        except Exception:
            deadletters.park(client, record["payload"], task_id=record["task_id"], error=record["error"])
            raise
        replayed += 1
    print(f"replayed {replayed} parked payload(s) into the ingest queue")
    return 0


def _pagerduty_subscribe(args: argparse.Namespace) -> int:
    from incident.cli import pagerduty

    return pagerduty.subscribe(get_settings(), args.service)


def _backup(args: argparse.Namespace) -> int:
    from incident.logging import configure_logging
    from incident.maintenance import backup_commands

    # The internal incident's own log lines go to stderr with the progress; stdout
    # keeps only the outcome.
    configure_logging(get_settings(), process="cli")

    if args.backup_command == "create":
        return backup_commands.create(
            backup_dir=args.backup_dir, keep=args.keep, jobs=_maintenance_jobs
        )
    return backup_commands.verify(
        backup_dir=args.backup_dir, max_age=args.max_age, mode=args.mode, jobs=_maintenance_jobs
    )


def _maintenance_jobs(settings: Settings, rules: Rules) -> MaintenanceJobs:
    """The jobs beat runs, so a backup run by hand raises and resolves the same incident."""
    from incident.context import Context
    from incident.worker.app import publish

    return Context(settings, rules, publish).maintenance


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="incident", description="Alertmanager webhooks in, incidents out."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = sub.add_parser("dev", help="everything on one machine, on embedded PostgreSQL and Redis")
    dev.add_argument("--state-dir", type=Path, default=Path(".incident"))
    dev.add_argument(
        "--host", default="127.0.0.1",
        help="address to listen on (default 127.0.0.1); any other needs "
        "INCIDENT_WEBHOOK_TOKEN and INCIDENT_API_TOKEN set",
    )
    dev.add_argument("--port", type=int, default=8080)
    dev.set_defaults(run=_dev)

    api = sub.add_parser("api", help="the HTTP receiver and API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8080)
    api.add_argument("--workers", type=int, default=1)
    api.set_defaults(run=_api)

    for name, run, what in (("worker", _worker, "a Celery worker"), ("beat", _beat, "Celery beat")):
        p = sub.add_parser(name, help=f"{what}; further arguments go to Celery")
        p.set_defaults(run=run, passes_through=True)

    sub.add_parser("migrate", help="bring the database to the latest migration").set_defaults(
        run=_migrate
    )

    dead = sub.add_parser(
        "dead-letters", help="payloads the worker gave up on after every retry"
    )
    dead.add_argument("action", choices=["list", "replay"])
    dead.set_defaults(run=_dead_letters)

    rules = sub.add_parser("rules", help="check or try out a rules file")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="COMMAND")
    check = rules_sub.add_parser("check", help="validate a rules file")
    check.add_argument("file", nargs="?", type=Path)
    check.set_defaults(run=_rules_check)
    test = rules_sub.add_parser("test", help="what one Alertmanager payload would get")
    test.add_argument("file", type=Path)
    test.add_argument("payload", type=Path)
    test.add_argument("--json", action="store_true", help="print JSON instead of text")
    test.set_defaults(run=_rules_test)

    pd = sub.add_parser("pagerduty", help="connect PagerDuty back to incident")
    pd_sub = pd.add_subparsers(dest="pagerduty_command", required=True, metavar="COMMAND")
    pd_subscribe = pd_sub.add_parser(
        "subscribe",
        help="create a V3 webhook subscription for a service (INCIDENT_PAGERDUTY_API_KEY) "
        "and print its secret",
    )
    pd_subscribe.add_argument("--service", required=True, metavar="ID",
                              help="the PagerDuty service's id (P…)")
    pd_subscribe.set_defaults(run=_pagerduty_subscribe)

    backup = sub.add_parser("backup", help="make a database backup, or verify the newest, now")
    backup_sub = backup.add_subparsers(dest="backup_command", required=True, metavar="COMMAND")
    backup_create = backup_sub.add_parser(
        "create", help="pg_dump into INCIDENT_BACKUP_DIR with a manifest; keep the newest"
    )
    backup_create.add_argument("--backup-dir", type=Path, help="default: INCIDENT_BACKUP_DIR")
    backup_create.add_argument(
        "--keep", type=int, help="backups to keep (default: maintenance.backup.keep)"
    )
    backup_create.set_defaults(run=_backup)
    backup_verify = backup_sub.add_parser(
        "verify", help="check the newest backup's age, checksum and readability, or restore it"
    )
    backup_verify.add_argument("--backup-dir", type=Path, help="default: INCIDENT_BACKUP_DIR")
    backup_verify.add_argument(
        "--max-age", metavar="DURATION", help="e.g. 26h (default: maintenance.backup.max_age)"
    )
    backup_verify.add_argument(
        "--mode",
        choices=["restore", "list"],
        help="restore into a scratch database, or only pg_restore --list "
        "(default: maintenance.backup.verify)",
    )
    backup_verify.set_defaults(run=_backup)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "passes_through", False):
        # Everything after `incident worker`/`incident beat` belongs to Celery.
        args.celery_args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.run(args)
    except ConfigurationError as exc:
        print(f"incident: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
