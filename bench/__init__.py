"""Benchmarks for the receiver, the end-to-end pipeline and the re-send fast path.

``python -m bench`` (``make bench``) starts its own PostgreSQL and Redis (unless
INCIDENT_BENCH_DATABASE_URL / INCIDENT_BENCH_REDIS_URL name existing ones),
runs every bench with bounded counts and durations over loopback only, prints
a table and writes ``bench/results/latest.json``.
"""
