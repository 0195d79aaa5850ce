"""The recorder's group statement keeps a plan that scales, whatever the statistics said
when it was prepared (issue 24): its generic plan is made once per connection, often
while the ledger is empty (a new deployment, a truncated or purged table), and is then
used for every group of a shard's whole run."""

from __future__ import annotations

from message_center import state
from message_center.claims import ShardClaim


def test_the_group_statement_finds_its_rows_by_primary_key_on_an_empty_ledger(execution_db):
    claim = ShardClaim("batch", 1, 0, 0)
    with execution_db.connect() as conn:
        conn.exec_driver_sql("TRUNCATE delivery_log, batch_event CASCADE")
        conn.commit()
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        conn.exec_driver_sql("SET enable_seqscan = off")  # as the recorder's connections
        parts = state._webhooks(conn, "batch", "rescheduled", "copied",
                                reported=state._RESCHEDULE_REPORTED)
        parts = {**parts, "recycle": state._recycle("batch", "rc_fin"), "copied_set": "",
                 "rec_failure": "", "copied_failure": ""}
        _, prepare, execute = state._prepare_sql(state.RECORD_GROUP, "batch",
                                                 state._RECORD_GROUP_TYPES,
                                                 tuple(sorted(parts.items())))
        conn.exec_driver_sql("DEALLOCATE ALL")  # a pooled connection may hold it already
        conn.exec_driver_sql(prepare)
        nulls = [None, None]
        plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + execute, {
            "ids": [1, 2], "event_ids": [1, 2], "marks": [True, False], "statuses": nulls,
            "errors": nulls, "providers": nulls, "delays": nulls, "give_up": nulls,
            "retry_errors": nulls, "classes": nulls, "reasons": nulls, "counted": nulls,
            "kind": "batch", "token": claim.token, "shard": claim.shard, "copy": False}))
        conn.invalidate()  # its prepared statement and settings must not go back to the pool
    # the rows by primary key (an index or bitmap scan with the arrays as its condition),
    # never a scan of either table
    assert "Index Cond: (id = ANY ($1))" in plan, plan  # the ledger rows
    assert "Index Cond: (id = ANY ($2))" in plan, plan  # their events
    assert "Seq Scan on delivery_log" not in plan and "Seq Scan on batch_event e " not in plan
