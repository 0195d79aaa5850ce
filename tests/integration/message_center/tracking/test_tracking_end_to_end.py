"""Tracking end to end: a tracked template is delivered through a real SMTP sink, its links
are followed with a real HTTP client against the real tracking server (uvicorn on
loopback) and real PostgreSQL records the hits and the suppression."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import replace

import httpx
import pytest
import uvicorn
from conftest import free_port
from processing_factory import events, insert_events, publish_templates
from sqlalchemy import text
from tracking_factory import BROWSER, TRACKED, hrefs, parts
from webhook_support import Receiver, dispatching, outbox, subscribe

from message_center.delivery.channels import Channels
from message_center.delivery.sms import SmsSettings
from message_center.delivery.smtp import SmtpSettings
from message_center.processing import ProcessingSettings, deliver_shard, recover, split_queue
from message_center.status_sync import sync_event_statuses
from message_center.tracking import tokens
from message_center.tracking_server import ServerSettings, create_app

KEY = "test-tracking-key-0123456789"
SETTINGS = ProcessingSettings(shards=1, delivery_chunk=10, retry_backoff_seconds=0,
                              retry_backoff_max_seconds=0, max_tries=3)
@pytest.fixture
def server(execution_db):
    """The tracking server on a free loopback port; the delivery signs with its key."""
    port = free_port()
    config = tokens.TrackingConfig(f"http://127.0.0.1:{port}", tokens.Signer([KEY]))
    tokens.configure(config)
    settings = ServerSettings(database_url=execution_db.url.render_as_string(False),
                              config=config, scanner_seconds=0, flush_seconds=0.05)
    app = create_app(settings)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                       lifespan="on"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    while not uv.started:
        time.sleep(0.02)
    try:
        yield app.state.tracking
    finally:
        uv.should_exit = True
        thread.join(10)
        tokens.configure(None)


@pytest.fixture
def channels(test_deployment, sms_sink):
    with Channels(SmtpSettings(port=test_deployment.smtp_port),
                  SmsSettings(base_url=sms_sink.url, sender="Shop"), kind="batch") as chans:
        yield chans


def drain(engine, channels):
    for claim in split_queue(engine, "batch", SETTINGS):
        deliver_shard(engine, claim, SETTINGS, channels, copy_status=False)
    recover(engine, SETTINGS, kinds=("batch",))
    sync_event_statuses(engine)


def send_one(execution_db, smtp_sink, channels, address="ada@example.test"):
    smtp_sink.clear()
    event_id = insert_events(execution_db, "batch", 1, email=address)[0]
    drain(execution_db, channels)
    assert events(execution_db, "batch", [event_id])[0]["status"] == "sent"
    (message,) = smtp_sink.messages()
    return event_id, message


def hits(engine):
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(
            "SELECT * FROM tracking_log ORDER BY id")).mappings()]


def test_links_pixel_mirror_and_unsubscribe(execution_db, smtp_sink, channels, server):
    publish_templates(execution_db, TRACKED)
    event_id, message = send_one(execution_db, smtp_sink, channels)
    html, plain = parts(message)
    base = server.settings.config.base_url
    links = hrefs(html)
    # tracked: the order link; left alone: mailto, data-mc-notrack, mirror, unsubscribe
    assert links[0].startswith(f"{base}/c/")
    assert links[1:3] == ["mailto:help@shop.example", "https://shop.example/private"]
    assert links[3].startswith(f"{base}/m/") and links[4].startswith(f"{base}/u/")
    pixel = re.search(r'<img src="([^"]+)"', html).group(1)
    assert pixel.startswith(f"{base}/o/")
    assert message["List-Unsubscribe"] == f"<{links[4]}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert links[3] in plain  # {{ mirror_url }} in the text part

    with httpx.Client(headers={"User-Agent": BROWSER}) as client:
        click = client.get(links[0])
        assert click.status_code == 302
        assert click.headers["location"] == "https://shop.example/orders/A-1?a=1&b=2"
        image = client.get(pixel)
        assert image.status_code == 200 and image.headers["content-type"] == "image/gif"
        assert image.content.startswith(b"GIF89a")
        mirror = client.get(links[3])
        assert mirror.status_code == 200
        assert "noindex" in mirror.headers["x-robots-tag"]
        assert '<meta name="robots" content="noindex, nofollow">' in mirror.text
        assert "Hello Ada1, order <b>A-1</b> is confirmed." in mirror.text
        assert "<img" not in mirror.text  # the mirror page is not an open
        page = client.get(links[4])
        assert page.status_code == 200 and "<form" in page.text
        one_click = client.post(links[4], content="List-Unsubscribe=One-Click",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert one_click.status_code == 200 and "unsubscribed" in one_click.text
    assert server.writer.wait_idle()
    recorded = hits(execution_db)
    assert [h["kind"] for h in recorded] == ["click", "open", "mirror", "unsubscribe"]
    assert recorded[0]["url"] == "https://shop.example/orders/A-1?a=1&b=2"
    assert all(h["event_id"] == event_id and not h["automated"] for h in recorded)
    with execution_db.connect() as conn:
        firsts = conn.execute(text("SELECT kind, link FROM tracking_first ORDER BY kind")).all()
        suppressed = conn.execute(text("SELECT channel, address, category, status "
                                       "FROM suppression")).all()
    assert [tuple(f) for f in firsts] == [("click", 0), ("open", -1)]
    assert [tuple(s) for s in suppressed] == [("email", "ada@example.test", "orders",
                                               "suppressed")]

    # the next event of a template in that category is ignored, with the reason
    smtp_sink.clear()
    again = insert_events(execution_db, "batch", 1, email="ada@example.test")[0]
    drain(execution_db, channels)
    row = events(execution_db, "batch", [again])[0]
    assert row["status"] == "ignored"
    assert "unsubscribed from the category orders" in row["error_reason"]
    assert smtp_sink.messages() == []


def test_forged_tokens_never_redirect(execution_db, smtp_sink, channels, server):
    publish_templates(execution_db, TRACKED)
    _, first = send_one(execution_db, smtp_sink, channels, "one@example.test")
    _, second = send_one(execution_db, smtp_sink, channels, "two@example.test")
    link_one = hrefs(parts(first)[0])[0]
    link_two = hrefs(parts(second)[0])[0]
    base = server.settings.config.base_url
    token = link_one.rsplit("/", 1)[1]
    other_key = tokens.Signer(["another-key-not-the-servers"])
    with httpx.Client(headers={"User-Agent": BROWSER}) as client:
        assert client.get(link_two).status_code == 302
        tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        for url in (f"{base}/c/{tampered}",
                    f"{base}/c/{token}?url=https://evil.example/",
                    f"{base}/c/{other_key.sign('c', 1, 0, 'https://evil.example/')}",
                    f"{base}/c/?url=https://evil.example/",
                    f"{base}/redirect?url=https://evil.example/",
                    # a valid token of another kind (the mirror of message one) as a click
                    f"{base}/c/" + hrefs(parts(first)[0])[3].rsplit("/", 1)[1],
                    # a click token signed for another link number of message one
                    f"{base}/c/{server.settings.config.signer.sign('c', 1, 5, 'x')}"):
            answer = client.get(url)
            if "?url=" in url and answer.status_code == 302:
                # the valid token still goes to its own stored URL, never to url=
                assert answer.headers["location"].startswith("https://shop.example/")
                continue
            assert answer.status_code == 404, url
            assert answer.text == "Not found\n"
            assert "location" not in answer.headers


def test_automated_hits_are_flagged(execution_db, smtp_sink, channels, server):
    publish_templates(execution_db, TRACKED)
    _, message = send_one(execution_db, smtp_sink, channels)
    html = parts(message)[0]
    link = hrefs(html)[0]
    pixel = re.search(r'<img src="([^"]+)"', html).group(1)
    with httpx.Client() as client:
        client.head(link)
        client.get(pixel, headers={"User-Agent": "Mozilla/5.0 (via ggpht.com GoogleImageProxy)"})
        client.get(pixel, headers={"User-Agent": "Mozilla/5.0"})
    assert server.writer.wait_idle()
    recorded = hits(execution_db)
    assert [(h["kind"], h["automated"], h["automated_reason"]) for h in recorded] == [
        ("click", True, "HEAD request"), ("open", True, "Gmail image proxy"),
        ("open", True, "Apple Mail Privacy Protection (prefetch)")]
    with execution_db.connect() as conn:  # no human hit: no human first open or click
        firsts = conn.execute(text("SELECT kind FROM tracking_first ORDER BY kind")).scalars()
        assert list(firsts) == ["click:automated", "open:automated"]


def test_first_open_and_first_click_of_each_link_are_webhooks(execution_db, smtp_sink,
                                                              channels, server):
    """event.opened / event.clicked reach a real receiver through the real dispatcher:
    the first automated and the first human open, the first of each per link, once."""
    publish_templates(execution_db, TRACKED)
    with Receiver() as receiver:
        _sub, receiver.secret = subscribe(execution_db, receiver.url,
                                          ["event.opened", "event.clicked"])
        event_id, message = send_one(execution_db, smtp_sink, channels)
        html = parts(message)[0]
        link, pixel = hrefs(html)[0], re.search(r'<img src="([^"]+)"', html).group(1)
        proxy = {"User-Agent": "Mozilla/5.0 (via ggpht.com GoogleImageProxy)"}
        with httpx.Client(headers={"User-Agent": BROWSER}) as client:
            client.get(pixel, headers=proxy)  # the image proxy's prefetch comes first
            client.head(link)  # a link scanner
            assert server.writer.wait_idle()  # (one batch: the order below is the hits')
            for _ in range(2):  # again: no second message
                client.get(pixel)
                client.get(link)
                client.get(pixel, headers=proxy)
        assert server.writer.wait_idle()
        with dispatching(execution_db):
            receiver.wait_for(lambda: len(receiver.received) >= 4)
        assert len(outbox(execution_db)) == 4
    assert all(r.verified for r in receiver.received)
    # one batch's messages about one event take consecutive sequence numbers, after
    # event.sent's 1 (the event's counter; this subscription does not want it: a gap)
    assert sorted(r.body["data"]["sequence"] for r in receiver.received) == [2, 3, 4, 5]
    got = sorted((r.body["type"], r.body["data"]["automated"], r.body["data"].get("url"))
                 for r in receiver.received)
    url = "https://shop.example/orders/A-1?a=1&b=2"
    assert got == [("event.clicked", False, url), ("event.clicked", True, url),
                   ("event.opened", False, None), ("event.opened", True, None)]
    bodies = {(r.body["type"], r.body["data"]["automated"]): r.body["data"]
              for r in receiver.received}
    assert bodies[("event.opened", True)]["automatedReason"] == "Gmail image proxy"
    assert bodies[("event.clicked", True)]["automatedReason"] == "HEAD request"
    assert bodies[("event.clicked", False)]["link"] == 0
    assert {d["externalId"] for d in bodies.values()} == {
        events(execution_db, "batch", [event_id])[0]["external_id"]}
    with execution_db.connect() as conn:  # the messages' time is the hit's
        first_human_open = conn.execute(text(
            "SELECT at FROM tracking_first WHERE kind = 'open'")).scalar_one()
    assert bodies[("event.opened", False)]["changedAt"].startswith(
        first_human_open.strftime("%Y-%m-%dT%H:%M:%S"))


def test_rate_limit_per_client(execution_db, smtp_sink, channels, server):
    publish_templates(execution_db, TRACKED)
    _, message = send_one(execution_db, smtp_sink, channels)
    pixel = re.search(r'<img src="([^"]+)"', parts(message)[0]).group(1)
    server.limiter.rate, server.limiter.burst = 0.1, 3
    with httpx.Client(headers={"User-Agent": BROWSER}) as client:
        codes = [client.get(pixel).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]


def test_the_event_api_and_the_lookup_show_the_tracking(execution_db, smtp_sink, channels,
                                                        server, test_deployment):
    from message_center.events import get_event
    from message_center.ids import to_public
    from message_center.lookup import LiveSource, event_detail

    publish_templates(execution_db, TRACKED)
    event_id, message = send_one(execution_db, smtp_sink, channels)
    html = parts(message)[0]
    with httpx.Client(headers={"User-Agent": BROWSER}) as client:
        client.get(re.search(r'<img src="([^"]+)"', html).group(1))
        client.get(hrefs(html)[0])
        client.head(hrefs(html)[0])
    assert server.writer.wait_idle()
    from fastapi.testclient import TestClient

    from message_center.api import Authorization, HealthThresholds, create_app

    class Reader:  # the API app with a test auth that lets everything through
        def check(self, kind: str) -> None:
            return None

    url = test_deployment.database_url("execution")
    app = create_app(lambda: "tester", lambda: url, thresholds=HealthThresholds(100, 400),
                     authorization=Authorization(push=lambda kind: (lambda: None),
                                                 read=lambda: Reader(),
                                                 check_push=lambda user, kind: None,
                                                 change_quarantine=lambda: "tester"))
    client = TestClient(app)
    public = to_public(event_id)
    answer = client.get(f"/v1/events/{public}")
    assert answer.status_code == 200
    tracking = answer.json()["tracking"]
    assert (tracking["opens"], tracking["clicks"], tracking["automatedClicks"]) == (1, 1, 1)
    assert tracking["firstOpen"] and tracking["firstClick"]
    assert tracking["links"][0]["url"] == "https://shop.example/orders/A-1?a=1&b=2"
    with execution_db.connect() as conn:
        assert get_event(conn, public)["delivery"]["status"] == "sent"
    detail = event_detail(public, [LiveSource("execution", "execution", execution_db, 0)], None)
    assert detail["tracking"]["opens"] == 1 and detail["tracking"]["clicks"] == 1
    # the lookup's message is the one sent: the same tracked links
    assert detail["message"]["available"], detail["message"]
    assert hrefs(detail["message"]["html"])[0] == hrefs(html)[0]


def test_text_part_links_are_tracked_only_where_the_author_marks_them(execution_db, smtp_sink,
                                                                      channels, server):
    publish_templates(execution_db, replace(TRACKED, text_body=(
        "Hello {{ firstName }}.\n"
        "Your order: {{ ('https://shop.example/orders/' ~ orderId) | tracked }}\n"
        "Help: https://shop.example/help\n")))
    _, message = send_one(execution_db, smtp_sink, channels)
    html, plain = parts(message)
    base = server.settings.config.base_url
    order_line, help_line = plain.splitlines()[1:3]
    assert help_line == "Help: https://shop.example/help"  # not marked: as written
    text_link = order_line.removeprefix("Your order: ")
    assert text_link.startswith(f"{base}/c/")
    assert text_link not in hrefs(html)  # its own number, after the HTML part's link
    with httpx.Client(headers={"User-Agent": BROWSER}) as client:
        click = client.get(text_link)
        assert click.status_code == 302
        assert click.headers["location"] == "https://shop.example/orders/A-1"
        assert client.get(hrefs(html)[0]).headers["location"] == \
            "https://shop.example/orders/A-1?a=1&b=2"
    assert server.writer.wait_idle()
    assert [(h["kind"], h["link"], h["url"]) for h in hits(execution_db)] == [
        ("click", 1, "https://shop.example/orders/A-1"),
        ("click", 0, "https://shop.example/orders/A-1?a=1&b=2")]
