"""The Message Center section of the Airflow UI (pages served by the API server)."""
