# syntax=docker/dockerfile:1
#
# One image for every process: `incident api` (the default), `incident worker`,
# `incident beat`, `incident migrate`, and Flower (`--entrypoint celery`).
#
#   docker build -t incident:latest .
#   docker run --rm -p 8080:8080 -e INCIDENT_DATABASE_URL=... -e INCIDENT_BROKER_URL=... \
#     -e INCIDENT_WEBHOOK_TOKEN=... -e INCIDENT_API_TOKEN=... incident:latest
#
# pg_dump must be the same major version as the server it dumps (pg_dump
# refuses newer servers, and a newer one writes dumps an older server cannot
# restore cleanly), so the client comes from the PostgreSQL project's apt
# repository rather than Debian's, which has only 15 in bookworm.
ARG PG_MAJOR=16

# The PostgreSQL project's apt signing key and source list. Debian's
# postgresql-common ships both the key and the script that writes the list, so
# the key arrives through a Debian-signed package, not a download.
FROM python:3.11-slim-bookworm AS pgdg
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-common=248* \
    && /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y \
    && rm -rf /var/lib/apt/lists/*

# Builds the virtual environment. The compilers stay in this stage: every
# dependency ships wheels for amd64 and arm64 today, and build-essential is
# there for the platform or release that does not.
FROM python:3.11-slim-bookworm AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential=12.9 \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
# README.md is optional here: setuptools only warns when it is missing.
COPY pyproject.toml README.md* ./
COPY incident/ incident/
# incident/migrations is a symlink to this directory; the wheel resolves it.
COPY migrations/ migrations/
RUN /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/incident --help >/dev/null

FROM python:3.11-slim-bookworm AS runtime
ARG PG_MAJOR
COPY --from=pgdg /etc/apt/sources.list.d/pgdg.sources /etc/apt/sources.list.d/pgdg.sources
# The whole directory, whichever of its key files the list names as Signed-By.
COPY --from=pgdg /usr/share/postgresql-common/pgdg/ /usr/share/postgresql-common/pgdg/
# A fixed numeric uid, so volumes and Kubernetes' runAsNonRoot can rely on it.
# The data and log directories are created here, owned by that user, so a
# fresh named volume mounted on them starts with the same owner.
RUN apt-get update \
    && apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}=${PG_MAJOR}.*" \
    && rm -rf /var/lib/apt/lists/* \
    && pg_dump --version && pg_restore --version \
    && groupadd --system --gid 10001 incident \
    && useradd --system --uid 10001 --gid incident --no-create-home \
        --home-dir /var/lib/incident --shell /usr/sbin/nologin incident \
    && install -d -o incident -g incident -m 0750 \
        /var/lib/incident /var/lib/incident/backups /var/log/incident

COPY --from=builder /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    INCIDENT_BACKUP_DIR=/var/lib/incident/backups

# Beat keeps its schedule file in the working directory, so it must be writable.
WORKDIR /var/lib/incident
USER 10001:10001

EXPOSE 8080

# For the API on its default port. Worker, beat, migrate and Flower override
# or disable it (docker-compose.yml does).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

ENTRYPOINT ["incident"]
CMD ["api", "--host", "0.0.0.0", "--port", "8080"]
