"""The channel seam: a channel defined here, in this module only, goes through push ->
link -> deliver -> status -> quarantine -> archive -> lookup with nothing in the domain
naming it (the proof that a new channel is its module, its templates and its tests).

The "pager" channel: its address is the wire field ``pagerId`` (``P-<digits>``), its
template part ``page``, its provider an outbox in memory (the sender is the part a real
channel would talk to a provider with; everything around it is the real code path on
real PostgreSQL).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Header, HTTPException
from fastapi.testclient import TestClient
from processing_factory import publish_templates

from message_center import channel as channels
from message_center.api import Authorization, HealthThresholds, create_app
from message_center.archiving import archive_window
from message_center.channel import Channel
from message_center.delivery.channels import Channels
from message_center.delivery.ledger import Attempt
from message_center.delivery.outcome import Outcome
from message_center.delivery.pool import RelayGate
from message_center.lookup import LiveSource, event_detail
from message_center.processing import ProcessingSettings, deliver_shard, split_queue
from message_center.rendering import render_part
from message_center.status_sync import sync_event_statuses
from message_center.templates import load_templates
from message_center.templates.versions import published_content, store_version

TOKEN = "test-token"
CELL = 1  # execution2
_PAGER_ID = re.compile(r"^P-[0-9]{1,12}$")


@dataclass
class PagerSettings:
    """Where pages go: an outbox (a real channel: its provider's URL and credentials)."""

    outbox: list[dict[str, Any]] = field(default_factory=list)


class PagerSender:
    def __init__(self, settings: PagerSettings) -> None:
        self.settings, self._lock = settings, threading.Lock()

    def relay_gate(self, shards: int) -> RelayGate:
        return RelayGate("pager://outbox", max_concurrent=1)

    def send(self, attempt: Attempt, variables: dict[str, Any],
             ready: Callable[[], None] | None) -> Outcome:
        parts = CHANNEL.render(CHANNEL.parts_from_row(attempt.row), variables)
        if ready is not None:
            ready()
        with self._lock:
            self.settings.outbox.append({"to": attempt.address, **parts})
        return Outcome.sent(f"page-{attempt.log_id}")

    def reconcile(self, attempt: Attempt) -> Outcome | None:
        return None

    def close(self) -> None:
        pass


class PagerChannel(Channel):
    name = "pager"
    label = "Pager"
    address_field = "pagerId"
    address_noun = "pager"
    address_description = "a pager id"
    template_noun = "a pager template"
    parts_hint = "page"
    template_parts = ("page",)
    required_parts = ("page",)
    settings_type = PagerSettings
    connection_label = "pager service"
    connection_id = "pager_default"

    def address_error(self, value: Any) -> str | None:
        if isinstance(value, str) and _PAGER_ID.match(value):
            return None
        return "pagerId is not a pager id (P- and digits, e.g. P-42)"

    def normalize_address(self, value: str) -> str:
        value = (value or "").strip()
        if not _PAGER_ID.match(value):
            raise ValueError(f"address {value!r} is not a pager id")
        return value

    def render(self, parts: Mapping[str, str | None],
               variables: dict[str, Any]) -> dict[str, str | None]:
        return {"page": render_part(parts.get("page"), variables, part="page")}

    def settings_from_connection(self, conn: Mapping[str, Any]) -> PagerSettings:
        return PagerSettings()  # a real channel: the provider's URL and credentials

    def open_sender(self, settings: PagerSettings, kind: str) -> PagerSender:
        return PagerSender(settings)


CHANNEL = PagerChannel()

TEMPLATE = """\
internal_name: orderPage
label: Order page
event_type: ORDER_PAGED
channel: pager
page: "Order {{ orderId }} for {{ firstName }}"
seeds:
  - address: P-1
    ctx: {orderId: A-0, firstName: Seed}
"""


@pytest.fixture
def pager() -> Iterator[PagerChannel]:
    channels.register(CHANNEL)
    try:
        yield CHANNEL
    finally:
        channels.unregister(CHANNEL.name)


def token_auth(authorization: str | None = Header(None)) -> str:
    if authorization != f"Bearer {TOKEN}":
        raise HTTPException(401, "Not authenticated")
    return "tester"


class _Everything:
    def check(self, kind: str) -> None:
        return None


def _no_check(user: str, kind: str) -> None:
    return None


def _may_change() -> str:
    return "tester"


ALLOW_ALL = Authorization(push=lambda kind: (lambda: None), read=lambda: _Everything(),
                          check_push=_no_check, change_quarantine=_may_change)


@pytest.fixture
def client(pager, execution2_db, test_deployment) -> TestClient:
    url = test_deployment.database_url("execution2")
    root = FastAPI()
    root.mount("/message-center", create_app(token_auth, lambda: url, authorization=ALLOW_ALL,
                                             thresholds=HealthThresholds(100, 400)))
    return TestClient(root, base_url="http://testserver/message-center/v1",
                      headers={"Authorization": f"Bearer {TOKEN}"})


def publish_pager_template(engine: Any, control: Any, directory: Path) -> None:
    """The template file is checked by the registry's channel (parts, seeds, render),
    versioned on the control instance and published on the execution instance."""
    (directory / "order_page.yaml").write_text(TEMPLATE, encoding="utf-8")
    loaded = load_templates(directory)
    loaded.raise_for_problems()
    template = loaded.find("orderPage")
    assert template.page == "Order {{ orderId }} for {{ firstName }}"
    with control.begin() as conn:
        version, _new = store_version(conn, template)
    publish_templates(engine, published_content(template.content(), version))


def run_processing(engine: Any, outbox: list[dict[str, Any]]) -> None:
    """One real-time processing round (link, deliver) and updateEventStatus."""
    settings = ProcessingSettings(shards=1)
    with Channels({"pager": PagerSettings(outbox)}, kind="rt") as senders:
        for claim in split_queue(engine, "rt", settings):
            deliver_shard(engine, claim, settings, senders, copy_status=False)
    sync_event_statuses(engine)


def test_a_channel_defined_in_a_test_goes_from_push_to_lookup(
        client, execution2_db, control_db, tmp_path):
    publish_pager_template(execution2_db, control_db, tmp_path)
    pushed = client.post("/rtEvents", json={
        "type": "ORDER_PAGED", "wishedChannel": "pager", "pagerId": "P-42",
        "ctx": {"orderId": "A-7", "firstName": "Ada"}})
    assert pushed.status_code == 201, pushed.text
    event_id = pushed.json()["id"]

    outbox: list[dict[str, Any]] = []
    run_processing(execution2_db, outbox)
    assert outbox == [{"to": "P-42", "page": "Order A-7 for Ada"}]

    event = client.get(f"/events/{event_id}").json()
    assert (event["status"], event["wishedChannel"], event["pagerId"]) == (
        "sent", "pager", "P-42")
    assert event["email"] is None and event["mobilePhone"] is None  # ACC's, unused here
    assert event["delivery"]["channel"] == "pager"
    assert event["delivery"]["providerId"].startswith("page-")

    now = datetime.now(UTC)
    archive_window(execution2_db, control_db, CELL, now - timedelta(hours=1),
                   now + timedelta(minutes=1), statistics=False)
    live = [LiveSource("mcExec2", "Execution instance 2", execution2_db, cell_id=CELL)]
    for sources in (live, []):  # the live instance, then the archive alone
        detail = event_detail(event_id, sources, control_db)
        assert detail is not None and detail["status"] == "sent"
        assert (detail["channel"], detail["pagerId"]) == ("pager", "P-42")
        assert detail["template"]["page"] == "Order {{ orderId }} for {{ firstName }}"
        assert detail["message"] == {"available": True, "channel": "pager", "to": "P-42",
                                     "sender": None, "page": "Order A-7 for Ada"}


def test_a_new_channel_is_validated_and_quarantined_like_the_others(
        client, execution2_db, control_db, tmp_path):
    publish_pager_template(execution2_db, control_db, tmp_path)
    refused = client.post("/rtEvents", json={"type": "ORDER_PAGED", "wishedChannel": "pager",
                                             "pagerId": "555"})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["field"] == "pagerId"
    assert "not a pager id" in refused.json()["detail"][0]["msg"]
    missing = client.post("/rtEvents", json={"type": "ORDER_PAGED", "wishedChannel": "pager",
                                             "email": "a@example.com"})
    assert missing.status_code == 422
    assert "pagerId is required when wishedChannel is 'pager'" in missing.text

    # No path segment declared: the address is a query parameter (as a URL would be).
    put = client.put("/quarantine/pager", params={"address": "P-7"},
                     json={"reason": "pager lost"})
    assert put.status_code == 200, put.text
    assert put.json()["channel"] == "pager"
    blocked = client.post("/rtEvents", json={
        "type": "ORDER_PAGED", "wishedChannel": "pager", "pagerId": "P-7",
        "ctx": {"orderId": "A-8", "firstName": "Bo"}}).json()["id"]
    outbox: list[dict[str, Any]] = []
    run_processing(execution2_db, outbox)
    assert outbox == []
    event = client.get(f"/events/{blocked}").json()
    assert event["status"] == "ignored"
    assert "quarantine" in event["errorReason"] and "pager lost" in event["errorReason"]


def test_a_template_of_the_new_channel_is_checked_by_it(pager, tmp_path):
    (tmp_path / "bad.yaml").write_text(TEMPLATE.replace("P-1", "pager one")
                                       + "subject: not a pager part\n", encoding="utf-8")
    problems = [str(p) for p in load_templates(tmp_path).problems]
    assert any("subject: not used by a pager template (use page)" in p for p in problems)
    assert any("'pager one'" in p and "not a pager id" in p for p in problems), problems
