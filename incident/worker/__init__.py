"""The Celery application: ``incident.worker:app`` (so ``celery -A incident.worker flower`` works)."""

from incident.worker.app import app

__all__ = ["app"]
