"""Benchmarks for the receiver, the end-to-end pipeline, the re-send fast path and paging.

``python -m bench`` (``make bench``) starts its own PostgreSQL and Redis (unless
INCIDENT_BENCH_DATABASE_URL / INCIDENT_BENCH_REDIS_URL name existing ones),
runs every bench with bounded counts and durations over loopback only, prints
a table and writes ``bench/results/latest.json`` and ``latest.md`` (the table
as Markdown with the machine line, for the README; ``--markdown`` prints it).
"""
