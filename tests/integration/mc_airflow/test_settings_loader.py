"""Loading airflow_settings.yaml into the real Airflow metadata DB is idempotent."""

from __future__ import annotations

import uuid

from mc_airflow.settings_loader import apply_settings
from message_center.settings_file import parse_settings


def test_load_twice_changes_nothing_the_second_time():
    suffix = uuid.uuid4().hex[:8]
    text = f"""
airflow:
  connections:
    - conn_id: t_{suffix}
      conn_type: postgres
      conn_host: 127.0.0.1
      conn_port: 5432
      conn_password: s3cret
      conn_extra: {{"sslmode": "disable"}}
  pools:
    - {{pool_name: p_{suffix}, pool_slot: 3, pool_description: test}}
  variables:
    - {{variable_name: v_{suffix}, variable_value: hello}}
"""
    settings = parse_settings(text, env={})
    assert apply_settings(settings) == {"created": 3, "updated": 0, "unchanged": 0}
    assert apply_settings(settings) == {"created": 0, "updated": 0, "unchanged": 3}

    from airflow.models import Connection, Pool
    from airflow.utils.session import create_session

    with create_session() as session:
        conn = session.query(Connection).filter(Connection.conn_id == f"t_{suffix}").one()
        assert (conn.host, conn.port, conn.password) == ("127.0.0.1", 5432, "s3cret")
        assert conn.extra_dejson == {"sslmode": "disable"}
        assert session.query(Pool).filter(Pool.pool == f"p_{suffix}").one().slots == 3

    changed = parse_settings(text.replace("pool_slot: 3", "pool_slot: 4"), env={})
    assert apply_settings(changed) == {"created": 0, "updated": 1, "unchanged": 2}
