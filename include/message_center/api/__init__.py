"""The event push API (a FastAPI app); the Airflow plugin mounts it under ``/message-center``."""

from message_center.api.app import Authorization, EventReadCheck, HealthThresholds, create_app

__all__ = ["Authorization", "EventReadCheck", "HealthThresholds", "create_app"]
