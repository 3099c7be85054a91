"""POST and DELETE /api/incidents/{id}/silence through the real app, against the real
Alertmanager: the silence it makes, what it does to a matching alert, and every refusal."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from incident.alerts.schemas import WebhookPayload
from incident.config import get_settings
from incident.db import session_scope
from incident.embedded import free_port
from incident.incidents.grouping import apply_webhook
from tests.alertmanager_support import AlertmanagerProcess
from tests.conftest import wait_for
from tests.factories import alert, payload
from tests.silences.conftest import (
    HEADERS,
    RULES,
    alert_state,
    client_for,
    open_incident,
    silences_for,
)

pytestmark = [pytest.mark.alertmanager, pytest.mark.timeout(120)]


def test_a_silenced_incident_silences_its_group_in_alertmanager_until_deleted(
    silencing_client, real_alertmanager: AlertmanagerProcess,
):
    incident_id, service = open_incident()
    real_alertmanager.post_alerts(
        {"labels": {"alertname": "HighErrorRate", "service": service, "instance": "a"}}
    )
    wait_for(lambda: alert_state(real_alertmanager.url, service) == "active",
             what="the alert active in Alertmanager")

    response = silencing_client.post(
        f"/api/incidents/{incident_id}/silence",
        json={"duration": "4h", "comment": "rolling back the deploy"}, headers=HEADERS,
    )

    assert response.status_code == 200, response.text
    body = response.json()
    [made] = silences_for(real_alertmanager.url, service)
    assert made["status"]["state"] == "active"
    assert {(m["name"], m["value"], m["isRegex"], m["isEqual"]) for m in made["matchers"]} == {
        ("alertname", "HighErrorRate", False, True), ("service", service, False, True),
    }
    assert made["createdBy"] == "api"
    public_url = get_settings().public_url
    assert made["comment"].startswith("rolling back the deploy - ")
    assert f"#{incident_id} {public_url}/incidents/{incident_id}" in made["comment"]
    lasts = datetime.fromisoformat(made["endsAt"]) - datetime.fromisoformat(made["startsAt"])
    assert timedelta(hours=4) - timedelta(seconds=5) < lasts <= timedelta(hours=4)
    wait_for(lambda: alert_state(real_alertmanager.url, service) == "suppressed",
             what="the alert suppressed by the silence")

    [shown] = body["silences"]
    assert shown["id"] == made["id"]
    assert shown["created_by"] == "api"
    assert shown["matchers"] == ['alertname="HighErrorRate"', f'service="{service}"']
    assert shown["expired_at"] is None
    silenced = [e for e in body["timeline"] if e["kind"] == "silenced"]
    assert [e["detail"] for e in silenced] == [{
        "by": "api", "silence_id": made["id"], "duration": "4h",
        "ends_at": silenced[0]["detail"]["ends_at"], "comment": "rolling back the deploy",
    }]

    lifted = silencing_client.delete(f"/api/incidents/{incident_id}/silence", headers=HEADERS)

    assert lifted.status_code == 200, lifted.text
    [expired] = silences_for(real_alertmanager.url, service)
    assert expired["status"]["state"] == "expired"
    wait_for(lambda: alert_state(real_alertmanager.url, service) == "active",
             what="the alert active again")
    after = lifted.json()
    assert after["silences"][0]["expired_at"] is not None
    assert [e["detail"] for e in after["timeline"] if e["kind"] == "unsilenced"] == [
        {"by": "api", "silence_ids": [made["id"]]}
    ]
    # Nothing left to expire: the same answer, and no second entry.
    again = silencing_client.delete(f"/api/incidents/{incident_id}/silence", headers=HEADERS)
    assert [e["kind"] for e in again.json()["timeline"]].count("unsilenced") == 1


def test_an_empty_body_silences_for_an_hour(silencing_client, real_alertmanager):
    incident_id, service = open_incident()
    response = silencing_client.post(f"/api/incidents/{incident_id}/silence", headers=HEADERS)
    assert response.status_code == 200, response.text
    [made] = silences_for(real_alertmanager.url, service)
    lasts = datetime.fromisoformat(made["endsAt"]) - datetime.fromisoformat(made["startsAt"])
    assert timedelta(minutes=59) < lasts <= timedelta(hours=1)
    assert made["comment"].startswith(f"#{incident_id} ")


def test_a_resolved_incident_can_still_be_silenced(silencing_client, real_alertmanager):
    incident_id, service = open_incident()
    silencing_client.post(f"/api/incidents/{incident_id}/resolve", headers=HEADERS)
    response = silencing_client.post(f"/api/incidents/{incident_id}/silence",
                                     json={"duration": "1d"}, headers=HEADERS)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "resolved"
    assert len(silences_for(real_alertmanager.url, service)) == 1


@pytest.mark.parametrize("duration", ["30s", "8d", "59s", "7d1m", "soon", "", "99999999999999999999d"])
def test_a_duration_outside_1m_to_7d_is_422_naming_duration(silencing_client, duration):
    incident_id, _ = open_incident()
    response = silencing_client.post(f"/api/incidents/{incident_id}/silence",
                                     json={"duration": duration}, headers=HEADERS)
    assert response.status_code == 422, response.text
    assert [f["field"] for f in response.json()["fields"]] == ["duration"]


def test_bad_bodies_are_refused_by_name(silencing_client):
    incident_id, _ = open_incident()
    url = f"/api/incidents/{incident_id}/silence"
    extra = silencing_client.post(url, json={"duration": "1h", "matchers": []}, headers=HEADERS)
    assert extra.status_code == 422
    assert [f["field"] for f in extra.json()["fields"]] == ["matchers"]
    not_json = silencing_client.post(url, content=b"{nope", headers=HEADERS)
    assert not_json.status_code == 400
    assert "JSON" in not_json.json()["error"]
    number = silencing_client.post(url, json={"duration": 3600}, headers=HEADERS)
    assert number.status_code == 422


def test_an_unknown_incident_is_404(silencing_client):
    for method in ("POST", "DELETE"):
        response = silencing_client.request(method, "/api/incidents/999999/silence",
                                            headers=HEADERS)
        assert response.status_code == 404, response.text
        assert response.json()["error"] == "no incident 999999"


def test_without_an_alertmanager_url_silencing_is_409_naming_the_setting(clean_state):
    incident_id, _ = open_incident()
    with client_for(None) as client:
        for method in ("POST", "DELETE"):
            response = client.request(method, f"/api/incidents/{incident_id}/silence",
                                      headers=HEADERS)
            assert response.status_code == 409, response.text
            assert "INCIDENT_ALERTMANAGER_URL" in response.json()["error"]


def test_an_ha_list_whose_first_member_is_down_still_silences(clean_state, real_alertmanager):
    down = f"http://127.0.0.1:{free_port()}"
    incident_id, service = open_incident()
    with client_for(f"{down},{real_alertmanager.url}") as client:
        response = client.post(f"/api/incidents/{incident_id}/silence", headers=HEADERS)
    assert response.status_code == 200, response.text
    [made] = silences_for(real_alertmanager.url, service)
    assert response.json()["silences"][0]["id"] == made["id"]


def test_no_alertmanager_answering_is_503_without_its_address_or_credentials(clean_state):
    incident_id, _ = open_incident()
    down = f"http://operator:hunter2-secret@127.0.0.1:{free_port()}"
    with client_for(down) as client:
        response = client.post(f"/api/incidents/{incident_id}/silence", headers=HEADERS)
        assert response.status_code == 503, response.text
        assert "try again" in response.json()["error"]
        assert "hunter2" not in response.text and "127.0.0.1" not in response.text
        shown = client.get(f"/api/incidents/{incident_id}", headers=HEADERS).json()
    # Whether the silence was made is unknown: it is not shown as made.
    assert shown["silences"] == []
    assert "silenced" not in [e["kind"] for e in shown["timeline"]]


def test_an_incident_whose_group_has_no_labels_is_409_not_a_silence_of_everything(
    silencing_client,
):
    body = payload(alert(instance="everything"), group_labels={})
    with session_scope() as session:
        incident_id = apply_webhook(session, WebhookPayload.model_validate(body), RULES).incident_id
    response = silencing_client.post(f"/api/incidents/{incident_id}/silence", headers=HEADERS)
    assert response.status_code == 409, response.text
    assert "every alert" in response.json()["error"]
