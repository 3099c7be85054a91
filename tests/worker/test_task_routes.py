"""Every task has an explicit name and a route: an unrouted task would land on the default queue."""

from __future__ import annotations

import pytest

from incident.worker import app
from incident.worker.routes import QUEUES, TASK_ROUTES

# Celery's configuration is read from the environment, once: it must be the test one.
pytestmark = pytest.mark.usefixtures("incident_environment")


def our_tasks() -> dict:
    app.loader.import_default_modules()
    return {name: task for name, task in app.tasks.items() if not name.startswith("celery.")}


def test_every_task_has_a_route_to_a_known_queue():
    tasks = our_tasks()
    assert tasks, "no tasks registered"
    unrouted = sorted(set(tasks) - set(TASK_ROUTES))
    assert unrouted == [], f"tasks without a route in incident/worker/routes.py: {unrouted}"
    assert {route["queue"] for route in TASK_ROUTES.values()} <= set(QUEUES)


def test_every_route_names_a_registered_task():
    assert sorted(set(TASK_ROUTES) - set(our_tasks())) == []


def test_task_names_are_explicit_and_namespaced():
    for name, task in our_tasks().items():
        assert name.startswith("incident."), name
        assert name == task.name


def test_delivery_settings_protect_against_lost_and_duplicate_work():
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.worker_send_task_events is True
    # Redis hands a message to another worker once it has been unacknowledged
    # this long; a late-acknowledged task must be long finished by then.
    visibility = conf.broker_transport_options["visibility_timeout"]
    late = {name: task for name, task in our_tasks().items() if task.acks_late is not False}
    assert late, "nothing acknowledged late?"
    for name, task in late.items():
        assert task.time_limit is not None, f"{name} has no hard time limit"
        assert task.time_limit < visibility, name


def test_only_work_with_its_own_recovery_acknowledges_early():
    early = sorted(name for name, task in our_tasks().items() if task.acks_late is False)
    assert all(name.startswith(("incident.maintenance.", "incident.remediation.run"))
               for name in early), early
