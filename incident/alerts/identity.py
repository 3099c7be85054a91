"""Stable identities for a group and for the content of one notification."""

from __future__ import annotations

import hashlib

import orjson

from incident.alerts.schemas import WebhookPayload


def group_hash(receiver: str, group_key: str) -> str:
    """One Alertmanager group: its receiver and groupKey (a groupKey is unique per route)."""
    return hashlib.sha256(f"{receiver}\x00{group_key}".encode()).hexdigest()


def payload_digest(payload: WebhookPayload) -> str:
    """What a notification says, ignoring how it was delivered.

    Alertmanager re-sends the whole group every group_interval/repeat_interval and
    an HA pair sends each notification from every replica: those copies share a
    digest, so they can be recognised without touching the database.
    """
    # Each alert as canonical JSON, sorted as bytes: a total order even when one
    # fingerprint appears twice with different labels or endsAt.
    alerts = sorted(
        orjson.dumps(
            [
                a.fingerprint,
                a.status,
                a.starts_at.isoformat(),
                a.ends_at.isoformat() if a.ends_at else None,
                a.labels,
                a.annotations,
            ],
            option=orjson.OPT_SORT_KEYS,
        )
        for a in payload.alerts
    )
    digest = hashlib.sha256(orjson.dumps([payload.receiver, payload.group_key, payload.status]))
    for alert in alerts:
        digest.update(b"\n" + alert)
    return digest.hexdigest()
