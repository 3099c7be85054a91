"""A label value built against a rule's regex cannot freeze the receiver.

The rules run in the receiver (to choose the queue) on every label value. With
a backtracking engine `.*-.*-prod` takes seconds against a long run of `-`,
and the whole api process, /healthz included, waited for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import WEBHOOK_TOKEN, ApiProcess
from tests.factories import alert, payload

HEADERS = {"Authorization": f"Bearer {WEBHOOK_TOKEN}", "Content-Type": "application/json"}
RULES = """\
severity:
  default: SEV3
  rules:
    - matchers: ['instance=~".*-.*-prod"']
      severity: SEV1
"""

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def api(incident_environment, tmp_path_factory) -> Iterator[ApiProcess]:
    folder: Path = tmp_path_factory.mktemp("regex-cost")
    (folder / "rules.yaml").write_text(RULES)
    process = ApiProcess(
        {**incident_environment, "INCIDENT_RULES_FILE": str(folder / "rules.yaml")},
        folder / "api.log",
    )
    process.wait_ready()
    yield process
    process.stop()


def post_while_probing(
    api: ApiProcess, body: dict
) -> tuple[httpx.Response | None, float, list[float]]:
    """Post ``body``; while it is handled, time /healthz. The webhook's answer,
    its time, and each probe's time."""
    content = orjson.dumps(body)
    answer: dict[str, object] = {}

    def send() -> None:
        started = time.monotonic()
        try:
            answer["response"] = httpx.post(
                f"{api.url}/webhooks/alertmanager", content=content, headers=HEADERS, timeout=30
            )
        except httpx.TimeoutException:
            answer["response"] = None
        finally:
            answer["seconds"] = time.monotonic() - started

    sender = threading.Thread(target=send)
    sender.start()
    probes: list[float] = []
    time.sleep(0.1)  # let the body arrive first
    for _ in range(3):
        started = time.monotonic()
        try:
            assert httpx.get(f"{api.url}/healthz", timeout=1).status_code == 200
        except httpx.TimeoutException:
            probes.append(float("inf"))
        else:
            probes.append(time.monotonic() - started)
        time.sleep(0.1)
    sender.join(60)
    return answer["response"], answer["seconds"], probes  # type: ignore[return-value]


def test_a_40000_character_value_neither_freezes_health_nor_the_webhook(api, clean_state):
    body = payload(alert(instance="-" * 40_000))
    response, seconds, probes = post_while_probing(api, body)
    assert max(probes) < 1.0, f"/healthz took {probes}s while the webhook was handled"
    assert seconds < 2.0, f"the webhook was answered after {seconds:.1f}s"
    assert response is not None and response.status_code in (202, 422), response
    api.check_alive()


def test_many_values_at_the_limit_are_classified_in_linear_time(api, clean_state):
    # Under the 16 KiB limit, so the regex runs on each: a backtracking engine
    # needs over a second per value here.
    value = "-" * (16 * 1024)
    body = payload(*(alert(instance=value, pod=f"p{n}") for n in range(8)))
    response, seconds, probes = post_while_probing(api, body)
    assert max(probes) < 1.0, f"/healthz took {probes}s while the webhook was handled"
    assert seconds < 2.0, f"the webhook was answered after {seconds:.1f}s"
    assert response is not None and response.status_code == 202, response
