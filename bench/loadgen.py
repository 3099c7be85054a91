"""HTTP load generators, loopback only.

* ``saturate``: as many requests as the server takes, from a fixed pool of
  keep-alive connections. ``wrk`` when available (installed with apt-get when
  missing and allowed); else a Python closed loop, labelled as such.
* ``open_loop``: requests sent on a fixed schedule whatever the responses, with
  latency measured from each request's *scheduled* time, so time spent queued
  behind a slow server (or a busy generator) is counted, not hidden (no
  coordinated omission).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

try:
    import uvloop
except ImportError:  # pragma: no cover - uvicorn[standard] brings it
    uvloop = None

WRK_DONE = r"""
-- Report counts and errors as one JSON line.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nBENCH_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
end
"""
WRK_POST = r"""
-- POST one fixed body with a bearer token.
function init(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.method = "POST"
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. args[2]
end
"""
WRK_POST_GROUPS = r"""
-- POST a body template with a new group id in each request: the slot (args[3]) becomes
-- a 12-hex-digit id, args[4] * 2^32 plus a counter, as bench.payloads.GroupBodies does.
local template, headers, slot, prefix
local counter = 0
function init(args)
  local f = assert(io.open(args[1], "rb"))
  template = f:read("*a")
  f:close()
  headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. args[2]}
  slot, prefix = args[3], tonumber(args[4]) * 4294967296
end
function request()
  counter = counter + 1
  local body = template:gsub(slot, string.format("%012x", prefix + counter))
  return wrk.format("POST", nil, headers, body)
end
"""
WRK_GET = r"""
-- GET a page with a session cookie (read from a file: never on a command line).
function init(args)
  local f = assert(io.open(args[1], "rb"))
  local cookie = f:read("*a")
  f:close()
  wrk.method = "GET"
  if cookie ~= "" then wrk.headers["Cookie"] = cookie end
end
"""


@dataclass
class Target:
    host: str
    port: int
    path: str
    token: str = ""  # sent as a bearer token when set
    method: str = "POST"
    cookie: str = ""  # a ``Cookie`` header's value, for the console's pages


# --------------------------------------------------------------------------- wrk


def ensure_wrk(install: bool) -> str | None:
    """Path to wrk; installs the Debian package when missing, allowed and possible."""
    found = shutil.which("wrk")
    if found or not install:
        return found
    if shutil.which("apt-get") is None:
        return None
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("bench: wrk is missing; installing the Debian package 'wrk'", flush=True)
    for argv in (["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"],):
        for attempt in (1, 2):
            done = subprocess.run(sudo + argv, env=env, capture_output=True, timeout=300)
            if done.returncode == 0:
                break
            if attempt == 1:  # an empty or stale package list: update once, retry
                subprocess.run(
                    sudo + ["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300
                )
    return shutil.which("wrk")


def wrk_saturate(
    wrk: str, target: Target, body: bytes, *, connections: int, seconds: float,
    group_slot: bytes = b"", group_prefix: int = 0,
) -> dict:
    """``body`` as is in every request; with ``group_slot``, a new group id in its place each time."""
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp, "load.lua")
        data = Path(tmp, "data")
        if target.method == "GET":
            script.write_text(WRK_GET + WRK_DONE)
            data.write_text(target.cookie)
            script_args = [str(data)]
        elif group_slot:
            if group_slot not in body or not group_slot.isalnum():
                raise ValueError("the group slot must be alphanumeric and in the body")
            script.write_text(WRK_POST_GROUPS + WRK_DONE)
            data.write_bytes(body)
            script_args = [str(data), target.token, group_slot.decode(), str(group_prefix)]
        else:
            script.write_text(WRK_POST + WRK_DONE)
            data.write_bytes(body)
            script_args = [str(data), target.token]
        url = f"http://{target.host}:{target.port}{target.path}"
        argv = [
            wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
            "-s", str(script), url, "--", *script_args,
        ]  # fmt: skip
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(
            f"wrk failed ({out.returncode}): {out.stdout[-1000:]} {out.stderr[-1000:]}"
        )
    stats = json.loads(line.removeprefix("BENCH_JSON "))
    elapsed = stats["duration_us"] / 1e6
    errors = sum(stats[k] for k in ("connect", "read", "write", "status", "timeout"))
    return {
        "generator": "wrk",
        "requests": stats["requests"],
        "seconds": elapsed,
        "rps": (stats["requests"] - stats["status"]) / elapsed,
        "errors": errors,
        "non_2xx": stats["status"],
    }


# ------------------------------------------------------------ raw HTTP/1.1 client


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, target: Target) -> Connection:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        return cls(reader, writer)

    async def exchange(self, request: bytes) -> int:
        """Send one request, read its whole response; return the status code."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def request_bytes(target: Target, body: bytes) -> bytes:
    head = f"{target.method} {target.path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
    if target.token:
        head += f"Authorization: Bearer {target.token}\r\n"
    if target.cookie:
        head += f"Cookie: {target.cookie}\r\n"
    if target.method != "GET":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + (body if target.method != "GET" else b"")


def run_loop(coro):
    if uvloop is not None:
        return uvloop.run(coro)
    return asyncio.run(coro)


# ------------------------------------------------------- Python closed loop (fallback)


def python_saturate(target: Target, body: bytes, *, connections: int, seconds: float) -> dict:
    return run_loop(_python_saturate(target, body, connections, seconds))


async def _python_saturate(target: Target, body: bytes, connections: int, seconds: float) -> dict:
    request = request_bytes(target, body)
    counts = {"ok": 0, "non_2xx": 0, "errors": 0}
    start = time.perf_counter()
    deadline = start + seconds

    async def client() -> None:
        conn = await Connection.open(target)
        try:
            while time.perf_counter() < deadline:
                status = await asyncio.wait_for(conn.exchange(request), 5)
                counts["ok" if 200 <= status < 300 else "non_2xx"] += 1
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            counts["errors"] += 1
        finally:
            conn.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = time.perf_counter() - start
    return {
        "generator": "python-closed-loop (wrk unavailable)",
        "requests": counts["ok"] + counts["non_2xx"],
        "seconds": elapsed,
        "rps": counts["ok"] / elapsed,
        "errors": counts["errors"] + counts["non_2xx"],
        "non_2xx": counts["non_2xx"],
    }


# ---------------------------------------------------------------------- open loop


@dataclass
class OpenLoopResult:
    rate: float
    seconds: float
    sent: int = 0
    accepted: int = 0
    non_2xx: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # measured window only, seconds
    send_lags: list[float] = field(default_factory=list)  # scheduled -> written, seconds

    def summary(self) -> dict:
        lat = sorted(self.latencies)
        lags = sorted(self.send_lags)
        return {
            "offered_rps": self.rate,
            "seconds": self.seconds,
            "sent": self.sent,
            "accepted": self.accepted,
            "non_2xx": self.non_2xx,
            "errors": self.errors,
            "p50_ms": percentile(lat, 50) * 1e3,
            "p90_ms": percentile(lat, 90) * 1e3,
            "p99_ms": percentile(lat, 99) * 1e3,
            "p999_ms": percentile(lat, 99.9) * 1e3,
            "max_ms": (lat[-1] if lat else float("nan")) * 1e3,
            "mean_ms": (statistics.fmean(lat) if lat else float("nan")) * 1e3,
            # How late the generator itself was in sending: already inside the latencies,
            # shown so a busy generator can be told apart from a slow server.
            "send_lag_p99_ms": percentile(lags, 99) * 1e3,
        }


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def open_loop(
    target: Target,
    body_for: Callable[[int], bytes],
    *,
    rate: float,
    seconds: float,
    warmup: float = 2.0,
    connections: int = 32,
    timeout: float = 10.0,
) -> OpenLoopResult:
    """Send ``rate`` requests/s for ``warmup + seconds``; only the last ``seconds`` are measured.

    ``body_for(i)`` gives the i-th body. ``connections`` keep-alive connections are
    opened up front; a request whose time has come waits for a free one, and that
    wait counts in its latency. Every request is bounded by ``timeout``.
    """
    return run_loop(_open_loop(target, body_for, rate, seconds, warmup, connections, timeout))


async def _open_loop(target, body_for, rate, seconds, warmup, connections, timeout):
    loop = asyncio.get_running_loop()
    # Not loop.time(): uvloop's clock has millisecond steps and is cached per loop turn.
    clock = time.perf_counter
    idle: asyncio.Queue[Connection | None] = asyncio.Queue()
    for conn in await asyncio.gather(*(Connection.open(target) for _ in range(connections))):
        idle.put_nowait(conn)
    result = OpenLoopResult(rate=rate, seconds=seconds)
    total = int(rate * (warmup + seconds))
    start = clock() + 0.05
    measured_from = start + warmup
    in_flight: set[asyncio.Task] = set()

    async def one(i: int, scheduled: float) -> None:
        conn = await idle.get()
        request = request_bytes(target, body_for(i))
        sent_at = clock()
        try:
            if conn is None:
                conn = await Connection.open(target)
            status = await asyncio.wait_for(conn.exchange(request), timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            result.errors += 1
            if conn is not None:
                conn.close()
            idle.put_nowait(None)  # reopened by whoever takes it next
            return
        finished = clock()
        idle.put_nowait(conn)
        if 200 <= status < 300:
            result.accepted += 1
        else:
            result.non_2xx += 1
        if scheduled >= measured_from:
            result.latencies.append(finished - scheduled)
            result.send_lags.append(sent_at - scheduled)

    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(one(i, scheduled))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        result.sent += 1
    if in_flight:
        _, stuck = await asyncio.wait(in_flight, timeout=timeout + 5)
        for task in stuck:  # never got a connection in time: count, do not hang
            task.cancel()
            result.errors += 1
    while not idle.empty():
        conn = idle.get_nowait()
        if conn is not None:
            conn.close()
    return result


async def finish(in_flight: set, pool) -> None:
    """Wait (at most 15 s) for the posts still in flight, then close the pool's connections."""
    if in_flight:
        await asyncio.wait(set(in_flight), timeout=15)
    while not pool.empty():
        conn = pool.get_nowait()
        if conn is not None:
            conn.close()
