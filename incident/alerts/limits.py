"""How long a label name or value the receiver takes: 16 KiB of UTF-8 each.

Prometheus and Alertmanager set no limit; this one keeps a hostile or broken
label from costing every matcher, store and notification that reads it. It is
checked where webhooks come in, not by the payload's schema, so that a payload
queued before the limit existed is still applied by the workers, not dropped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from incident.alerts.schemas import WebhookPayload

LABEL_LIMIT_BYTES = 16 * 1024
# A name over the limit is shown cut to this many characters.
_SHOWN_NAME = 64
# A UTF-8 character is at most 4 bytes: this many characters always fit.
_ALWAYS_FITS = LABEL_LIMIT_BYTES // 4


@dataclass(frozen=True, slots=True)
class OversizedLabel:
    """One label over the limit: where it is, and what is wrong with it."""

    field: str
    message: str


def _bytes_over_limit(text: str) -> int | None:
    """The UTF-8 length of ``text`` when it is over the limit, else None."""
    if len(text) <= _ALWAYS_FITS:
        return None
    size = len(text.encode("utf-8", "surrogatepass"))
    return size if size > LABEL_LIMIT_BYTES else None


def _shown(name: str) -> str:
    return name if len(name) <= _SHOWN_NAME else f"{name[:_SHOWN_NAME]}…"


def _label_sets(payload: WebhookPayload) -> Iterator[tuple[str, Mapping[str, str]]]:
    for index, alert in enumerate(payload.alerts):
        yield f"alerts.{index}.labels", alert.labels
    yield "groupLabels", payload.group_labels
    yield "commonLabels", payload.common_labels


def oversized_label(payload: WebhookPayload) -> OversizedLabel | None:
    """The first label whose name or value is over ``LABEL_LIMIT_BYTES``, if any."""
    for where, labels in _label_sets(payload):
        if not labels or max(map(len, (*labels, *labels.values()))) <= _ALWAYS_FITS:
            continue  # the usual case, told apart at C speed
        for name, value in labels.items():
            if (name_bytes := _bytes_over_limit(name)) is not None:
                return OversizedLabel(
                    f"{where}.{_shown(name)}",
                    f"label name {_shown(name)!r} is {name_bytes} bytes of UTF-8; "
                    f"the limit is {LABEL_LIMIT_BYTES} (16 KiB)",
                )
            if (value_bytes := _bytes_over_limit(value)) is not None:
                return OversizedLabel(
                    f"{where}.{name}",
                    f"label {_shown(name)!r}: the value is {value_bytes} bytes of UTF-8; "
                    f"the limit is {LABEL_LIMIT_BYTES} (16 KiB)",
                )
    return None
