"""The event push API (a FastAPI app); the Airflow plugin mounts it under ``/message-center``."""

from message_center.api.app import HealthThresholds, create_app

__all__ = ["HealthThresholds", "create_app"]
