"""Machine facts, the summary table, and the JSON file."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in (
        "fastapi",
        "uvicorn",
        "celery",
        "kombu",
        "redis",
        "SQLAlchemy",
        "psycopg",
        "pydantic",
        "uvloop",
        "httptools",
    ):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
        "incident_source": str(_incident_source()),
        "git_commit": _git(["rev-parse", "--short", "HEAD"]),
        # Others work in the same tree: say whether what ran was the commit alone.
        "git_uncommitted_changes": bool(_git(["status", "--porcelain", "--untracked-files=no"])),
        "packages": versions,
    }


def _incident_source() -> Path:
    """Where the measured ``incident`` package lives (the checkout, or an export of one)."""
    import incident

    return Path(incident.__file__).resolve().parent


def _git(args: list[str]) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=_incident_source(),
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def rows(results: dict) -> list[tuple[str, str, str, str]]:
    """(measure, value, target, verdict) for the table."""
    out: list[tuple[str, str, str, str]] = []
    receiver = results.get("receiver")
    if receiver:
        out.extend(_receiver_rows(receiver))
    e2e = results.get("end_to_end")
    if e2e:
        for run in e2e["runs"]:
            c = run["worker_concurrency"]
            ceiling = run["drain_ceiling"]["alerts_per_s"]
            out.append(
                (
                    f"e2e worker c={c}: drain ceiling (workers alone)",
                    f"{ceiling:.0f} alerts/s",
                    "",
                    "",
                )
            )
            for a in run["attempts"]:
                out.append(
                    (
                        f"e2e worker c={c}: {a['alerts_per_s']:.0f} alerts/s for {a['seconds']}s",
                        f"LLEN {a['llen_first']}->{a['llen_last']} (max {a['llen_max']}, "
                        f"slope {a['llen_slope_per_s']:+.2f}/s), stored "
                        f"{a['stored_alerts']}/{a['accepted'] * e2e['plan']['alerts_per_payload']}",
                        "",
                        "held" if a["held"] else "did not hold",
                    )
                )
            best = run["sustained_alerts_per_s"]
            out.append(
                (
                    f"e2e worker c={c}: highest sustained rate",
                    (f"{best:.0f} alerts/s" if best else "none held")
                    + (
                        f" (failed at {run['lowest_failed_alerts_per_s']:.0f})"
                        if run.get("lowest_failed_alerts_per_s")
                        else ""
                    ),
                    f">= {run.get('target_alerts_per_s', 1000)} alerts/s",
                    _verdict(run["target_met"]),
                )
            )
    resend = results.get("resend")
    if resend:
        for r in resend["in_process"]:
            out.append(
                (
                    f"resend {r['alerts_per_payload']:>2}-alert: new group vs re-send (median)",
                    f"{r['new_group_us_median']:.0f} us vs {r['resend_us_median']:.0f} us "
                    f"= {r['ratio']:.1f}x",
                    ">= 5x",
                    _verdict(r["target_met"]),
                )
            )
        w = resend["worker"]
        out.append(
            (
                f"resend worker c={w['worker_concurrency']} {w['alerts_per_payload']}-alert: drain msgs/s",
                f"new {w['new_group_messages_per_s']:.0f}/s vs re-send "
                f"{w['resend_messages_per_s']:.0f}/s = {w['ratio']:.1f}x",
                "",
                "",
            )
        )
    paging = results.get("paging")
    if paging:
        for run in paging["runs"]:
            workers = " + ".join(w["command"] for w in run["workers"])
            name = f"paging {run['layout']} ({workers})"
            bg = run["background"]
            out.append(
                (
                    f"{name}: SEV1 POST -> PD trigger p50/p99 under "
                    f"{bg['offered_alerts_per_s']:.0f} alerts/s",
                    f"{run['p50_ms']:.0f} / {run['p99_ms']:.0f} ms (max {run['max_ms']:.0f}, "
                    f"n={run['sev1_paged']}/{run['sev1_sent']}, missing {run['sev1_missing']}, "
                    f"gen lag p99 {run['gen_lag_p99_ms']:.1f})",
                    "" if run["target_met"] is None else f"p99 <= {run['target_p99_ms']:.0f} ms",
                    "reference" if run["target_met"] is None else _verdict(run["target_met"]),
                )
            )
            st = run["stages_ms"]
            q = run["queues"]
            out.append(
                (
                    f"{name}: stages p50/p99",
                    f"to ingest {st['to_ingest']['p50']:.0f}/{st['to_ingest']['p99']:.0f}, "
                    f"to claim {st['to_claim']['p50']:.0f}/{st['to_claim']['p99']:.0f}, "
                    f"to PD {st['to_pagerduty']['p50']:.0f}/{st['to_pagerduty']['p99']:.0f} ms; "
                    f"LLEN max ingest {q['ingest']['max']}, page {q['page']['max']}, "
                    f"notify {q['notify']['max']}",
                    "",
                    "",
                )
            )
    storm = results.get("storm")
    if storm:
        out.extend(_storm_rows(storm))
    click = results.get("slack_click")
    if click:
        out.extend(_slack_click_rows(click))
    console = results.get("console")
    if console:
        out.extend(_console_rows(console))
    if e2e and e2e.get("rss"):
        out.extend(_rss_rows("e2e", e2e["rss"]))
    breaker = results.get("breaker")
    if breaker:
        closed, refused, fleet = breaker["closed_success"], breaker["open_refusal"], breaker["concurrent"]
        out.append(
            (
                "breaker check per remediation (acquire + record, closed) median / p99",
                f"{closed['median_ms']:.3f} / {closed['p99_ms']:.3f} ms "
                f"(open refusal {refused['median_ms']:.3f} ms; {fleet['clients']} clients at once "
                f"{fleet['median_ms']:.3f} / {fleet['p99_ms']:.3f} ms)",
                f"median < {breaker['target_median_ms']:.0f} ms",
                _verdict(breaker["target_met"]),
            )
        )
    backup = results.get("backup")
    if backup:
        name = f"backup {backup['incidents']:,} incidents"
        runs = ", ".join(f"{r['backup_s']:.1f}" for r in backup["rounds"])
        out.append(
            (
                f"{name}: pg_dump -Fc {backup['pg_dump_version']} (PostgreSQL "
                f"{backup['server_version']})",
                f"{backup['backup_s_median']:.1f} s ({runs}); dump "
                f"{backup['dump_bytes'] / 2**20:.1f} MiB of a "
                f"{backup['database_bytes'] / 2**20:.0f} MiB database",
                "",
                "",
            )
        )
        runs = ", ".join(f"{r['verify_s']:.1f}" for r in backup["rounds"])
        out.append(
            (
                f"{name}: verify by restore (checksum, list, restore, count, drop)",
                f"{backup['verify_s_median']:.1f} s ({runs}); of which pg_restore "
                f"{backup['restore_s_median']:.1f} s",
                "",
                "",
            )
        )
    durability = results.get("durability")
    if durability:
        medians = durability["rps_median"]
        for policy, runs in durability["rps_runs"].items():
            out.append((
                f"receiver w=1 1-alert, Redis appendfsync {policy}: webhooks/s at saturation",
                f"{medians[policy]:.0f} ({', '.join(f'{v:.0f}' for v in runs)})", "", "",
            ))
        out.append((
            "appendfsync always / everysec (same run, alternating)",
            f"{durability['always_over_everysec']:.2f}", "", "",
        ))
    for name, cpu in results.get("cpu_during", {}).items():
        if cpu.get("other_cores") is not None:
            out.append(
                (
                    f"machine during {name}",
                    f"bench+stack {cpu['bench_cores']:.2f} cores, others "
                    f"{cpu['other_cores']:.2f} cores (of {os.cpu_count()}); cpu speed index "
                    f"{cpu['speed_index_before']:.0f} -> {cpu['speed_index_after']:.0f}",
                    "",
                    "",
                )
            )
    return out


def _storm_rows(storm: dict) -> list[tuple[str, str, str, str]]:
    offer, inc, alerts = storm["offer"], storm["incidents"], storm["alerts"]
    pd, slack, drain, checks = storm["pagerduty"], storm["slack"], storm["drain"], storm["checks"]
    name = f"storm {offer['alerts']:,} alerts/{offer['seconds']}s"
    sev = ", ".join(f"{k} {v}" for k, v in inc["by_severity"].items())
    left = drain["left_at_end"]
    if drain["settled_s"] is not None:
        settled = f"settled {drain['settled_s']:.1f} s"
    else:
        ledger = ", ".join(f"{k} {v}" for k, v in left["ledger"].items()) or "none"
        settled = (
            f"NOT settled within {drain['wait_limit_s']} s (ledger rows {ledger}; "
            f"digest backlog {left['slack_digest']}, unacked {left['unacked']})"
        )
    ingest = drain["ingest_drained_s"]
    ingest_text = f"{ingest:.1f} s" if ingest is not None else "never"
    # Alerts not stored yet may be waiting in the ingest queue: no verdict on losses then.
    undrained = (
        ""
        if ingest is not None
        else f"; ingest NOT drained ({left['ingest']} webhooks still queued)"
    )
    drained = "" if ingest is not None else "n/a, not drained"
    q = storm["queues"].get("max", {})
    rows = [
        (
            f"{name}: webhooks accepted",
            f"{offer['accepted']:,}/{offer['webhooks']:,} ({offer['webhooks_per_s']:.0f}/s, "
            f"{offer['groups']:,} groups; POST p50/p99 {offer['post_p50_ms']:.0f}/"
            f"{offer['post_p99_ms']:.0f} ms)",
            "all",
            _verdict(checks["all_accepted"]),
        ),
        (
            f"{name}: incidents opened (database)",
            f"{inc['opened']:,} of {inc['expected']:,} groups ({sev}); resolved "
            f"{inc['by_status'].get('resolved', 0)}/{inc['expected_resolved']}{undrained}",
            "1 per group",
            drained or _verdict(checks["one_incident_per_group"]),
        ),
        (
            f"{name}: lost alerts (fingerprint not in exactly 1 incident)",
            f"{alerts['lost']} not stored, {alerts['in_several_incidents']} in several, "
            f"{alerts['final_state_mismatches']} wrong final state (of {alerts['offered']:,})"
            + undrained,
            "0",
            _lost_verdict(alerts, drained),
        ),
        (
            f"{name}: PagerDuty events",
            f"{pd['triggers']} triggers ({pd['distinct_keys_triggered']} dedup_keys), "
            f"{pd['resolves']} resolves; {pd['paged_groups_expected']} groups to page, "
            f"missing {pd['missing_pages']}",
            "every SEV1/SEV2 paged",
            _verdict(checks["no_missing_pages"]),
        ),
        (
            f"{name}: duplicate pages (group under >1 dedup_key)",
            f"{pd['duplicate_pages']} (repeat triggers of one key {pd['repeat_triggers_same_key']})",
            "0",
            _verdict(checks["no_duplicate_pages"]),
        ),
        (
            f"{name}: Slack calls",
            f"chat.postMessage {slack['post_parents']} parents + {slack['post_replies']} replies + "
            f"{slack['post_digests']} digests, chat.update {slack['chat_update']}; "
            f"{slack['ledger_rows_via_digest']}/{slack['ledger_rows']} ledger rows via digests",
            "",
            "",
        ),
        (
            f"{name}: Slack peak rates",
            f"posts max {slack['posts_max_1s']}/1 s, {slack['posts_max_10s']}/10 s, "
            f"{slack['posts_max_60s']}/60 s; chat.update max {slack['updates_max_60s']}/60 s",
            f"posts 1/s (+{slack['limit_burst']}), update {slack['limit_updates_per_min']}/min",
            _verdict(checks["slack_within_limits"]),
        ),
        _told_row(name, slack.get("told"), checks),
        (
            f"{name}: drain after the offer",
            f"ingest drained {ingest_text}; {settled}",
            f"settled <= {drain['wait_limit_s']} s",
            _verdict(checks["settled"]),
        ),
        (
            f"{name}: queue depth max",
            f"ingest {q.get('ingest')}, page {q.get('page')}, notify {q.get('notify')}, "
            f"reserved {q.get('unacked')}, Slack digest backlog {q.get('slack_digest')}",
            "",
            "",
        ),
    ]
    if storm.get("burst"):
        rows.extend(_burst_rows(storm["burst"]))
    rows.extend(_rss_rows(name, storm["rss"]))
    logs = [storm["logs"]["api"], *storm["logs"]["workers"]]
    errors = sum(log.get("errors", 0) for log in logs)
    warnings = sum(log.get("warnings", 0) for log in logs)
    top = next((log["top"][0] for log in logs if log.get("top")), "")
    rows.append(
        (
            f"{name}: api + worker log errors / warnings",
            f"{errors} / {warnings}" + (f" (most: {top[:100]})" if top else ""),
            "",
            "",
        )
    )
    return rows


def _receiver_rows(receiver: dict) -> list[tuple[str, str, str, str]]:
    out = []
    processes = receiver["plan"]["processes"]
    for size in receiver["sizes"]:
        name = f"receiver {size['alerts_per_payload']:>2}-alert, {processes} processes"
        for measure in size["servers"].values():
            lat = measure["latency_at_half"]
            runs = ", ".join(f"{v:.0f}" for v in measure["saturation_rps_runs"])
            redis_ms = measure["redis_cpu_ms_per_webhook"]
            redis_text = f"{redis_ms:.2f} ms" if redis_ms is not None else "not measured"
            out.append((
                f"{name}, {measure['label']}: webhooks/s; p50/p99 at {lat['offered_rps']:.0f}/s "
                "open loop; CPU per webhook",
                f"{measure['saturation_rps_median']:.0f} ({runs}); {lat['p50_ms']:.1f} / "
                f"{lat['p99_ms']:.1f} ms (errors {lat['errors'] + lat['non_2xx']}); server "
                f"{measure['server_cpu_ms_per_webhook']:.2f} ms + Redis {redis_text}",
                "", "",
            ))
        ours = size["servers"]["incident"]
        out.append((
            f"{name}: incident api / parse + LPUSH, webhooks/s (same run)",
            f"{size['ratio_to_parse_lpush']:.2f}x",
            f">= {size['ratio_target']}x", _verdict(size["ratio_met"]),
        ))
        out.append((
            f"{name}: incident api CPU per webhook (server processes, Redis apart)",
            f"{ours['server_cpu_ms_per_webhook']:.2f} ms",
            f"<= {size['cpu_target_ms']} ms", _verdict(size["cpu_met"]),
        ))
    return out


def _lost_verdict(alerts: dict, not_drained: str) -> str:
    if alerts["in_several_incidents"] or alerts["unexpected"]:
        return _verdict(False)
    if not_drained and (alerts["lost"] or alerts["final_state_mismatches"]):
        return not_drained
    return _verdict(alerts["lost"] == 0 and alerts["final_state_mismatches"] == 0)


def _rss_rows(name: str, rss: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    for role in ("api", "worker"):
        peaks = rss.get(role)
        if not peaks:
            continue
        rows.append(
            (
                f"{name}: peak RSS {role} ({peaks['processes']} processes)",
                f"{peaks['peak_rss_mib']:.0f} MiB summed (PSS {peaks['peak_pss_mib']:.0f}); "
                f"largest tree {peaks['peak_tree_rss_mib']:.0f}, largest process "
                f"{peaks['peak_process_rss_mib']:.0f} MiB",
                "",
                "",
            )
        )
    return rows


def _slack_click_rows(click: dict) -> list[tuple[str, str, str, str]]:
    def latency(measured: dict) -> str:
        return (f"{measured['p50_ms']:.0f} / {measured['p99_ms']:.0f} ms "
                f"(max {measured['max_ms']:.0f}, n={measured['n']})")

    pace = click["plan"]["pace_per_s"]
    return [
        (f"slack click -> 200 p50/p99 ({click['clicks']} clicks at {pace:.0f}/s)",
         latency(click["click_to_200"]), f"max < {click['click_200_target_ms']:.0f} ms",
         _verdict(click["target_met"])),
        ("slack click -> PagerDuty acknowledge p50/p99",
         f"{latency(click['click_to_pagerduty_ack'])}; by the Slack user "
         f"{click['acknowledged_by_slack_user']}/{click['incidents']}, "
         f"duplicates {click['duplicate_acknowledges']}", "", ""),
        ("slack click stages p50/p99",
         "to acknowledged in PostgreSQL {}; then to PagerDuty {}".format(
             *(f"{click['stages_ms'][stage]['p50_ms']:.0f}/{click['stages_ms'][stage]['p99_ms']:.0f} ms"
               for stage in ("to_acknowledged", "to_pagerduty"))), "", ""),
        ("  reference, same run: webhook -> 202 p50/p99",
         latency(click["reference_webhook_to_202"]), "", ""),
        ("  reference, same run: webhook -> PagerDuty trigger p50/p99",
         latency(click["reference_webhook_to_pagerduty_trigger"]), "", ""),
    ]


def _console_rows(console: dict) -> list[tuple[str, str, str, str]]:
    counts = console["row_counts"]
    name = f"console, {counts['incidents']:,} incidents"
    rows = []
    for page, label in (("list", "GET /"), ("incident", "GET /incidents/{id}"),
                        ("stats", "GET /stats"), ("healthz", "  reference, same api: GET /healthz")):
        m = console["measured"][page]
        lat = m["latency_at_half"]
        runs = ", ".join(f"{v:.0f}" for v in m["saturation_rps_runs"])
        target = f"p99 < {console['list_p99_target_ms']:.0f} ms" if page == "list" else ""
        rows.append((
            f"{name}: {label} pages/s at saturation; p50/p99 at {lat['offered_rps']:.0f}/s",
            f"{m['saturation_rps_median']:.0f} ({runs}); {lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} ms "
            f"(max {lat['max_ms']:.0f}, errors {lat['errors'] + lat['non_2xx']})",
            target,
            _verdict(console["target_met"]) if target else "",
        ))
    rows.append((
        f"{name}: filled with bulk SQL",
        f"{console['fill_s']:.1f} s ({counts['alerts']:,} alerts, "
        f"{counts['timeline_entries']:,} timeline entries)", "", "",
    ))
    return rows


def _told_row(name: str, told: dict | None, checks: dict) -> tuple[str, str, str, str]:
    """Told, as the fake Slack received it: a parent, a digest line or a storm message."""
    if not told:
        return (f"{name}: Slack told every incident", "not measured", "", "")
    after = told["all_told_after_end_s"]
    last = told["last_slack_call_after_end_s"]
    figure = (
        f"{told['told']:,}/{told['incidents']:,} told"
        + (f", the last {after:+.1f} s after the storm's end" if after is not None else "")
        + (f"; last Slack call {last:+.1f} s" if last is not None else "")
    )
    target = (f"all within {told['within_s']:.0f} s; nothing left at "
              f"{told['quiet_within_s']:.0f} s")
    ok = checks.get("slack_told_within_30s", False) and checks.get("slack_quiet_within_60s", False)
    return (f"{name}: Slack told every incident", figure, target, _verdict(ok))


def _burst_rows(burst: dict) -> list[tuple[str, str, str, str]]:
    name = f"burst {burst['groups']} new SEV1 groups/{burst['seconds']}s"
    checks = burst["checks"]
    p50, worst = burst["mention_p50_s"], burst["mention_max_s"]
    return [
        (
            f"{name}: mentioned in Slack after its webhook",
            f"{burst['mentioned']}/{burst['groups']} mentioned"
            + (f", p50 {p50:.1f} s, max {worst:.1f} s" if worst is not None else "")
            + f" ({burst['parents']} parents, {burst['storm_messages']} storm message, "
            f"{burst['chat_update']} chat.update)",
            f"all within {burst['within_s']:.0f} s",
            _verdict(checks["all_mentioned_within_60s"]),
        ),
        (
            f"{name}: PagerDuty",
            f"{burst['pagerduty_triggers']} triggers for {burst['incidents']} incidents",
            "1 per incident",
            _verdict(checks["one_page_each"]),
        ),
        (
            f"{name}: Slack peak rates",
            f"posts max {burst['posts_max_10s']}/10 s, {burst['posts_max_60s']}/60 s; "
            f"chat.update max {burst['updates_max_60s']}/60 s",
            "posts 1/s (+3), update 50/min",
            _verdict(checks["slack_within_limits"]),
        ),
    ]


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def table(results: dict) -> str:
    data = [("measure", "value", "target", "verdict"), *rows(results)]
    widths = [max(len(r[i]) for r in data) for i in range(4)]
    lines = []
    for n, r in enumerate(data):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(results: dict) -> str:
    """The headline table as Markdown, with the machine it ran on, for the README."""
    data = [("measure", "value", "target", "verdict"), *rows(results)]
    lines = ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in data]
    lines.insert(1, "|---|---|---|---|")
    return "\n".join([*lines, "", machine_line(results)])


def _md_cell(cell: str) -> str:
    return cell.replace("|", "\\|")


def machine_line(results: dict) -> str:
    m, config = results["machine"], results.get("config", {})
    commit = m.get("git_commit") or "unknown commit"
    if m.get("git_uncommitted_changes"):
        commit += " + uncommitted changes"
    runtime = f", bench runtime {results['runtime_s']:.0f} s" if "runtime_s" in results else ""
    mode = " (--quick)" if config.get("quick") else ""
    return (
        f"Machine: {m['cores']} cores {m['cpu_model'] or 'unknown CPU'}, Python {m['python']}, "
        f"{m['platform']}; {commit}; {m['date']}{runtime}{mode}; loadavg at start "
        f"{m['loadavg_at_start'][0]:.2f}."
    )


def write_markdown(results: dict, name: str) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / name
    path.write_text(markdown(results) + "\n")
    return path


def write(results: dict, name: str) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / name
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)
    return path


def _jsonable(value):
    if isinstance(value, float):
        return None
    return str(value)
