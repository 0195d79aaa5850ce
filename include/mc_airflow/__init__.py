"""Airflow-facing glue (connections, settings loading); the domain stays in message_center."""
