"""Splitting the queue and linking to templates (one statement), on real PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import replace

from processing_factory import (
    ORDER_TEMPLATE,
    SMS_TEMPLATE,
    events,
    expire_leases,
    insert_events,
    publish_templates,
)
from sqlalchemy import text

from message_center.processing import (
    ProcessingSettings,
    ShardClaim,
    claim_due,
    release_stale_claims,
    split_queue,
)
from message_center.publishing import unpublish


def test_claim_takes_only_due_events_links_them_and_expires_the_expired(execution_db):
    publish_templates(execution_db)
    due = insert_events(execution_db, "rt", 2)
    later = insert_events(execution_db, "rt", 1, scheduled="2999-01-01T00:00:00Z")
    past = insert_events(execution_db, "rt", 1, expiration="2000-01-01T00:00:00Z")
    with execution_db.begin() as conn:
        result = claim_due(conn, "rt", token=7, limit=10, lease_seconds=60)
    assert (result.linked, result.not_taken, result.expired) == (2, 0, 1)
    assert result.per_shard == {0: 2}
    rows = {row["id"]: row for row in events(execution_db, "rt")}
    assert all(rows[i]["claim_token"] == 7 and rows[i]["status"] == "pending_delivery"
               and rows[i]["template_name"] and rows[i]["processing"] for i in due)
    assert rows[later[0]]["claim_token"] is None and rows[later[0]]["status"] == "pending"
    assert rows[past[0]]["status"] == "expired" and rows[past[0]]["processed"]
    assert "expired" in rows[past[0]]["error_reason"]
    with execution_db.begin() as conn:  # claimed events are leased: not due again
        assert claim_due(conn, "rt", token=8, limit=10, lease_seconds=60).claimed == 0


def test_concurrent_claims_never_share_an_event(execution_db):
    insert_events(execution_db, "batch", 10)
    with execution_db.connect() as first, execution_db.connect() as second:
        first.begin()
        second.begin()
        a = claim_due(first, "batch", token=1, limit=6, lease_seconds=60)
        b = claim_due(second, "batch", token=2, limit=6, lease_seconds=60)  # skips locked
        first.commit()
        second.commit()
    assert (a.claimed, b.claimed) == (6, 4)  # no template published: not taken, once each
    tokens = [row["claim_token"] for row in events(execution_db, "batch")]
    assert tokens.count(1) == 6 and tokens.count(2) == 4


def test_split_deals_routing_batches_round_robin_into_shards(execution_db):
    publish_templates(execution_db)
    insert_events(execution_db, "batch", 11)
    settings = ProcessingSettings(routing_batch_size=4, shards=3, max_events_per_run=10)
    claims = split_queue(execution_db, "batch", settings)
    assert [claim.events for claim in claims] == [4, 3, 3]
    assert len({claim.token for claim in claims}) == 1
    assert Counter((row["claim_shard"], row["status"]) for row in events(execution_db, "batch")
                   if row["claim_token"]) == {(0, "pending_delivery"): 4,
                                              (1, "pending_delivery"): 3,
                                              (2, "pending_delivery"): 3}
    left = [row for row in events(execution_db, "batch") if row["claim_token"] is None]
    assert len(left) == 1  # max_events_per_run: the next run takes it
    assert ShardClaim.from_xcom(claims[1].to_xcom()) == claims[1]


def test_link_uses_the_latest_published_template(execution_db):
    publish_templates(execution_db, ORDER_TEMPLATE, replace(ORDER_TEMPLATE, version=2),
                      SMS_TEMPLATE)
    linked = insert_events(execution_db, "batch", 2)
    unknown = insert_events(execution_db, "batch", 1, type="NO_SUCH_TYPE")
    wrong_channel = insert_events(execution_db, "batch", 1, wished_channel="sms",
                                  mobile_phone="+33600000001")
    with execution_db.begin() as conn:
        result = claim_due(conn, "batch", token=5, limit=10, lease_seconds=60)
    assert (result.linked, result.not_taken, result.expired) == (2, 2, 0)
    rows = {row["id"]: row for row in events(execution_db, "batch")}
    for event_id in linked:
        assert rows[event_id]["status"] == "pending_delivery"
        assert (rows[event_id]["template_name"], rows[event_id]["template_version"]) == (
            "orderConfirmation", 2)
    for event_id in unknown + wrong_channel:
        assert rows[event_id]["status"] == "not_taken_into_account"
        assert rows[event_id]["error_reason"].startswith("no published")
        assert rows[event_id]["processed"] is not None
    assert "sms template for event type ORDER" in rows[wrong_channel[0]]["error_reason"]
    # never reprocessed: a later publication does not bring them back
    publish_templates(execution_db, replace(ORDER_TEMPLATE, internal_name="x",
                                            event_type="NO_SUCH_TYPE"))
    expire_leases(execution_db, "batch")
    assert split_queue(execution_db, "batch", ProcessingSettings()) == []


def test_link_prefers_the_event_language_and_ignores_unpublished(execution_db):
    publish_templates(execution_db,
                      replace(ORDER_TEMPLATE, internal_name="orderFr", language="fr"),
                      replace(ORDER_TEMPLATE, internal_name="orderEn", language="en"))
    french = insert_events(execution_db, "rt", 1, language="fr")
    other = insert_events(execution_db, "rt", 1, language="de")
    (claim,) = split_queue(execution_db, "rt", ProcessingSettings(shards=1))
    assert claim.events == 2
    rows = {row["id"]: row for row in events(execution_db, "rt")}
    assert rows[french[0]]["template_name"] == "orderFr"
    assert rows[other[0]]["template_name"] == "orderEn"  # latest published
    with execution_db.begin() as conn:
        unpublish(conn, "orderFr")
        unpublish(conn, "orderEn")
    insert_events(execution_db, "rt", 1, language="fr")
    with execution_db.begin() as conn:
        assert claim_due(conn, "rt", token=9, limit=10, lease_seconds=60).not_taken == 1


def test_an_event_left_claimed_but_unlinked_is_linked_when_its_lease_runs_out(execution_db):
    """Claimed by an older version (claim, then link): 'pending' with a lease; due again
    when the lease runs out, then claimed and linked in one go."""
    publish_templates(execution_db)
    insert_events(execution_db, "rt", 1)
    with execution_db.begin() as conn:
        conn.execute(text("UPDATE rt_event SET claim_token = 3, claim_shard = 0, "
                          "next_attempt = now() + interval '1 hour'"))
    assert split_queue(execution_db, "rt", ProcessingSettings()) == []
    expire_leases(execution_db, "rt")
    (claim,) = split_queue(execution_db, "rt", ProcessingSettings(shards=1))
    assert claim.events == 1 and claim.token != 3
    assert events(execution_db, "rt")[0]["status"] == "pending_delivery"


def test_stale_claims_come_back(execution_db):
    """A worker died after linking, before delivering: the events are processed again."""
    publish_templates(execution_db)
    insert_events(execution_db, "batch", 3)
    assert [c.events for c in split_queue(execution_db, "batch", ProcessingSettings())] == [1] * 3
    with execution_db.begin() as conn:
        assert release_stale_claims(conn, "batch") == 0  # lease still running
    expire_leases(execution_db, "batch")
    with execution_db.begin() as conn:
        assert release_stale_claims(conn, "batch") == 3
    assert {row["status"] for row in events(execution_db, "batch")} == {"pending"}
    assert sum(c.events for c in split_queue(execution_db, "batch", ProcessingSettings())) == 3


def test_a_big_split_claims_in_parallel_within_the_run_maximum(execution_db, monkeypatch):
    """Two claim statements at once (a big backlog): every event once, one token, the
    shards' counts adding up, and no more than max_events_per_run although both claim
    at the same time."""
    from message_center.processing import queue

    monkeypatch.setattr(queue, "PARALLEL_MIN_BATCH", 4)  # parallel from batches of 4
    statements: list[tuple[str, int]] = []
    claim = queue.state.claim_due

    def counting_claim(conn, kind, **kwargs):
        statements.append((threading.current_thread().name, kwargs["limit"]))
        return claim(conn, kind, **kwargs)

    monkeypatch.setattr(queue.state, "claim_due", counting_claim)
    publish_templates(execution_db)
    insert_events(execution_db, "batch", 41)
    settings = ProcessingSettings(routing_batch_size=4, shards=3, max_events_per_run=38)
    claims = split_queue(execution_db, "batch", settings)
    claimed = [row for row in events(execution_db, "batch") if row["claim_token"]]
    assert len(claimed) == 38 and sum(claim.events for claim in claims) == 38
    assert len({claim.token for claim in claims}) == 1
    assert max(c.events for c in claims) - min(c.events for c in claims) <= 2
    assert Counter(row["claim_shard"] for row in claimed) == {
        claim.shard: claim.events for claim in claims}
    limits = [limit for _, limit in statements]
    assert sum(limits) == 38 and max(limits) == 4  # the last one asked for 2
    threads = {name for name, _ in statements[1:]}  # the first batch alone, then two
    assert len(threads) == 2 and all(name.startswith("mc-split") for name in threads)
