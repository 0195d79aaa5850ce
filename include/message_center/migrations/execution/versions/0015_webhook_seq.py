"""Per-event webhook sequence numbers from a counter on the event row (issue 27).

* ``rt_event.webhook_seq`` / ``batch_event.webhook_seq`` (integer, default 0): the number
  of the event's last webhook message. The UPDATE that changes a reported status raises
  it in its SET list (and the tracking's ``event.opened`` / ``event.clicked`` by their
  count), so the number is taken under the event's row lock: two transactions reporting
  on one event no longer take the same number (``max(seq) + 1`` over the outbox, read
  from the statement's snapshot, did). Untouched when no subscription is enabled.
  A constant default: no table rewrite; existing events start from their outbox rows'
  highest number, so numbering continues.
* The ``last_modified`` trigger of both tables skips an update that only raises the
  counter (the tracking's): the archive does not copy the counter, so the row has not
  changed for it (and the update stays HOT: no indexed column changes).

Revision ID: e0015
Revises: e0012
"""

from alembic import op

revision = "e0015"
down_revision = "e0012"
branch_labels = None
depends_on = None

KINDS = ("rt", "batch")


def upgrade() -> None:
    for kind in KINDS:
        table = f"{kind}_event"
        op.execute(f"ALTER TABLE {table} ADD COLUMN webhook_seq integer NOT NULL DEFAULT 0")
        op.execute(f"DROP TRIGGER {table}_touch ON {table}")
        op.execute(
            f"CREATE TRIGGER {table}_touch BEFORE UPDATE ON {table} FOR EACH ROW "
            "WHEN (OLD.webhook_seq = NEW.webhook_seq OR OLD.status IS DISTINCT FROM NEW.status)"
            " EXECUTE FUNCTION mc_touch_last_modified()"
        )
        # after the new trigger: existing events are not re-archived for their counter
        op.execute(f"""
            UPDATE {table} e SET webhook_seq = o.seq
            FROM (SELECT event_id, max(seq) AS seq FROM webhook_outbox
                  WHERE event_kind = '{kind}' GROUP BY event_id) o
            WHERE e.id = o.event_id
        """)


def downgrade() -> None:
    for kind in KINDS:
        table = f"{kind}_event"
        op.execute(f"DROP TRIGGER {table}_touch ON {table}")
        op.execute(
            f"CREATE TRIGGER {table}_touch BEFORE UPDATE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION mc_touch_last_modified()"
        )
        op.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS webhook_seq")
