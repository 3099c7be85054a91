"""`incident worker` with no queue flags: two Celery nodes under this one command.

- ``celery@HOST`` consumes every queue, with the pool the arguments ask for;
- ``page@HOST`` consumes only ``page``, with one pool process that nothing else
  can occupy: a SEV1 webhook and its PagerDuty trigger never wait for a process
  that ingestion or Slack work holds.

The main node consumes ``page`` too, so pages use its free processes as well;
``worker_disable_prefetch`` keeps either node from holding a message it cannot
start at once. The main node runs nicer (``MAIN_NODE_NICENESS``), so when the
cores are short a page's process gets them first. With ``-Q`` (or ``-X``) the user chose the queues: one node, as
asked, and no supervisor.

Supervision. The nodes are children of this process, in its process group (a
``kill`` of the group, a Ctrl-C at the terminal, reach all of them). SIGTERM,
SIGINT and SIGHUP are passed on as SIGTERM (a warm shutdown: tasks in flight
finish), SIGQUIT as SIGQUIT (cold). When one node ends without being asked, the
other is stopped warmly and this command exits: a restart is the process
manager's job (compose's restart policy, systemd, Kubernetes), which counts and
shows it, where restarting here would hide a crash loop and leave a worker
running without its reserved page process in between. The exit code is the
first non-zero one in the order the nodes ended (128 + N for a node killed by
signal N), else 0. Each node gets SIGTERM from the kernel if this process dies
(``PR_SET_PDEATHSIG``), so killing it outright leaves no orphans behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

import structlog
from celery.utils.nodenames import host_format

from incident.queues import PAGE, QUEUES

RESERVED_QUEUE = PAGE
RESERVED_CONCURRENCY = 1
# The main node runs this much nicer than the page node: when the cores are all
# busy (a storm), the scheduler gives a page's process, the api and PostgreSQL the
# CPU first, and ingestion the rest. It changes nothing while a core is idle.
MAIN_NODE_NICENESS = 5
# What a node gets when this command receives the signal on the left.
FORWARDED = {
    signal.SIGTERM: signal.SIGTERM,
    signal.SIGINT: signal.SIGTERM,
    signal.SIGHUP: signal.SIGTERM,
    signal.SIGQUIT: signal.SIGQUIT,
}
# Options naming one node's own resource or sizing: the reserved node takes none of
# them (its concurrency and name are its own; two nodes cannot share a pid file).
_NOT_SHARED = ("--autoscale", "--pidfile", "--statedb", "-S")
_REFUSED = ("--detach", "-D")

log = structlog.get_logger(__name__)


class WorkerUsageError(ValueError):
    """The arguments cannot run beside a reserved page node; the message says why."""


def chooses_queues(args: Sequence[str]) -> bool:
    """The user named the queues (``-Q``/``--queues``) or left some out (``-X``)."""
    return any(
        a.startswith(("-Q", "--queues", "-X", "--exclude-queues")) for a in args
    )


def node_commands(args: Sequence[str], executable: str = sys.executable) -> dict[str, list[str]]:
    """The two ``incident worker -Q …`` command lines, by node name."""
    for arg in args:
        if arg in _REFUSED or arg.startswith("--detach"):
            raise WorkerUsageError(
                f"{arg}: `incident worker` supervises its nodes in the foreground; run it "
                "under a process manager, or pass -Q to run a single detached node"
            )
    base = [executable, "-m", "incident", "worker"]
    main_name = _option_value(args, "--hostname", "-n") or "celery@%h"
    page_name = reserved_node_name(main_name)
    return {
        main_name: [*base, "--queues", ",".join(QUEUES), *args],
        page_name: [
            *base, *_without(args, _NOT_SHARED),
            # Last, so they win over the user's own (Celery takes an option's last value).
            "--queues", RESERVED_QUEUE, "--concurrency", str(RESERVED_CONCURRENCY),
            "--prefetch-multiplier", "1", "--hostname", page_name,
        ],
    }  # fmt: skip


def supervise(args: Sequence[str]) -> int:
    """Run the main node and the page node until both have ended; the exit code."""
    commands = node_commands(args)
    main_node = next(iter(commands))
    return Supervisor(commands, niceness={main_node: MAIN_NODE_NICENESS}).run()


def reserved_node_name(main: str) -> str:
    """``page@HOST`` beside the default ``celery@HOST``; ``NAME-page@HOST`` beside ``NAME@HOST``.

    A name without ``@`` is a host, as Celery reads it.
    """
    name, _, host = main.rpartition("@")
    return f"page@{host}" if name in ("", "celery") else f"{name}-page@{host}"


def _option_value(args: Sequence[str], long: str, short: str) -> str | None:
    value = None
    for i, arg in enumerate(args):
        if arg in (long, short) and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(long + "="):
            value = arg.split("=", 1)[1]
        elif arg.startswith(short) and not arg.startswith("--") and len(arg) > len(short):
            value = arg[len(short):]
    return value


def _without(args: Sequence[str], options: Sequence[str]) -> list[str]:
    """``args`` less each of ``options`` and its value, in any of Click's spellings."""
    kept: list[str] = []
    skip_next = False
    for arg in args:
        if skip_next:
            skip_next = False
        elif arg in options:
            skip_next = True
        elif any(arg.startswith(o + "=") for o in options if o.startswith("--")) or any(
            arg.startswith(o) and len(arg) > 2 for o in options if not o.startswith("--")
        ):
            continue
        else:
            kept.append(arg)
    return kept


@dataclass
class _Node:
    name: str
    proc: subprocess.Popen[bytes]
    code: int | None = None


class Supervisor:
    """Runs the nodes until they have all ended; see the module's docstring."""

    def __init__(
        self, commands: dict[str, list[str]], niceness: dict[str, int] | None = None
    ) -> None:
        self.commands = commands
        self.niceness = niceness or {}
        self.nodes: list[_Node] = []
        self._stopping = False
        self._exit_code = 0

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in FORWARDED}
        try:
            try:
                for name, argv in self.commands.items():
                    self.nodes.append(_Node(host_format(name), _spawn(argv, self.niceness.get(name, 0))))
                    log.info("worker node started", node=name, pid=self.nodes[-1].proc.pid)
            except OSError as exc:
                log.error("cannot start a worker node", error=str(exc))
                self._exit_code = 1
                self._stop_all(signal.SIGTERM)
            if self._stopping:  # a signal came while they were starting
                self._stop_all(signal.SIGTERM)
            self._reap()
            return self._exit_code
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True
        self._stop_all(FORWARDED[signal.Signals(signum)])

    def _stop_all(self, sig: signal.Signals) -> None:
        for node in self.nodes:
            if node.code is None:
                try:
                    node.proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    def _reap(self) -> None:
        by_pid = {node.proc.pid: node for node in self.nodes}
        while any(node.code is None for node in self.nodes):
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            node = by_pid.get(pid)
            if node is None:
                continue
            returncode = os.waitstatus_to_exitcode(status)
            node.proc.returncode = returncode  # reaped here, not by Popen
            node.code = returncode if returncode >= 0 else 128 - returncode
            if node.code and not self._exit_code:
                self._exit_code = node.code
            if self._stopping:
                log.info("worker node stopped", node=node.name, exit_code=node.code)
                continue
            log.error(
                "worker node ended; stopping the others", node=node.name, exit_code=node.code,
                how=_describe(returncode),
            )
            self._stopping = True
            self._stop_all(signal.SIGTERM)


def _spawn(argv: list[str], niceness: int) -> subprocess.Popen[bytes]:
    # This process runs no threads, which is what makes preexec_fn safe.
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL,
        preexec_fn=_dies_with(os.getpid(), niceness),  # noqa: PLW1509
    )


def _dies_with(parent: int, niceness: int) -> Callable[[], None]:
    def set_death_signal() -> None:
        from billiard.util import set_pdeathsig

        if niceness:
            os.nice(niceness)  # inherited by the node's pool processes

        try:
            set_pdeathsig(signal.SIGTERM)
        except OSError:  # not Linux: a killed supervisor leaves its nodes running
            return
        if os.getppid() != parent:  # the supervisor died before the line above
            os.kill(os.getpid(), signal.SIGTERM)

    return set_death_signal


def _describe(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"
