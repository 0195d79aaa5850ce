"""The bounce parser on a corpus of real-world bounces (flufl.bounce's test data, see
tests/data/bounces/README.md): every sample gives a result or a clear reason, the RFC 3464
samples give flufl.bounce's expected recipients with the permanence its authors recorded,
and their Status / Diagnostic-Code are classified."""

from __future__ import annotations

from pathlib import Path

import pytest

from message_center.delivery.bounce_mail import OUR_MESSAGE_ID, parse_bounce
from message_center.ids import to_public

pytestmark = pytest.mark.fast

CORPUS = Path(__file__).parents[3] / "data" / "bounces" / "flufl"
SAMPLES = sorted(CORPUS.glob("*.txt"))

# flufl.bounce 6.0.0 tests/test_detectors.py, the DSN rows: (file, address, temporary)
DSN_EXPECTED = [
    ("dsn_01.txt", "userx@example.com", False), ("dsn_03.txt", "userx@example.be", False),
    ("dsn_04.txt", "userx@example.ch", False), ("dsn_05.txt", "userx@example.cz", True),
    ("dsn_06.txt", "userx@example.com", True), ("dsn_07.txt", "userx@example.nz", True),
    ("dsn_08.txt", "userx@example.de", True), ("dsn_09.txt", "userx@example.com", False),
    ("dsn_10.txt", "anne.person@dom.ain", False), ("dsn_11.txt", "joem@example.com", False),
    ("dsn_12.txt", "userx@example.jp", False), ("dsn_13.txt", "userx@example.com", False),
    ("dsn_14.txt", "userx@example.com.dk", False), ("dsn_15.txt", "userx@example.com", False),
    ("dsn_16.txt", "userx@example.com", False), ("dsn_17.txt", "userx@example.fi", True),
    ("dsn_18.txt", "email@replaced.net", False),
]
NOT_BOUNCES = {"bounce_01.txt", "dumbass_01.txt", "groupwise_03.txt", "qmail_08.txt",
               "simple_43.txt"}


def test_the_corpus_is_there():
    assert len(SAMPLES) == 117
    assert (CORPUS / "LICENSE").read_text().startswith("Copyright 2004-2026 Barry Warsaw")


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_every_sample_gives_a_result_or_a_clear_reason(path):
    parsed = parse_bounce(path.read_bytes())
    if path.name in NOT_BOUNCES:
        assert parsed.problem == "not a bounce: no failed recipient found"
        return
    assert parsed.failures, path.name
    assert parsed.problem.startswith("no Message Center Message-ID")  # none are ours
    for failure in parsed.failures:
        assert failure.classification.klass.value in (
            "hard", "soft", "policy", "transient", "error")


@pytest.mark.parametrize(("name", "address", "temporary"), DSN_EXPECTED)
def test_rfc3464_samples(name, address, temporary):
    parsed = parse_bounce((CORPUS / name).read_bytes())
    found = {f.address: f for f in parsed.failures} | {
        f.original: f for f in parsed.failures if f.original}
    assert address in found, [f.address for f in parsed.failures]
    assert found[address].permanent is not temporary


@pytest.mark.parametrize(("name", "klass", "reason"), [
    ("dsn_01.txt", "soft", "mailbox_full"),  # 5.0.0 (recipient reached disk quota)
    ("dsn_11.txt", "hard", "user_unknown"),  # 5.1.1
    ("dsn_05.txt", "soft", "unreachable"),  # delayed, 4.4.1
    ("postfix_01.txt", "hard", "user_unknown"),  # not a DSN: from the text
    ("postfix_05.txt", "policy", "refused"),
    ("yahoo_02.txt", "soft", "mailbox_full"),
])
def test_classes_of_real_bounces(name, klass, reason):
    (failure, *_) = parse_bounce((CORPUS / name).read_bytes()).failures
    assert (failure.classification.klass.value, failure.classification.reason) == (
        klass, reason)


def test_our_message_id_is_found_in_the_quoted_original():
    log_id = 12345
    raw = (CORPUS / "dsn_13.txt").read_bytes().replace(
        b"<mailman.8262.1143060203.1568.wed_ride@grizz.org>",
        f"<mc.{to_public(log_id)}@shop.example>".encode())
    parsed = parse_bounce(raw)
    assert parsed.log_ids == (log_id,) and parsed.problem is None
    assert OUR_MESSAGE_ID.search(b"Message-ID: <MC.42@x.test>")


@pytest.mark.parametrize(("raw", "problem"), [
    (b"", "not a bounce: no failed recipient found"),
    (b"Subject: hello\r\n\r\njust a reply, thanks!\r\n", "not a bounce: no failed recipient"),
    (b"\xff\xfe garbage \x00\x01", "not a bounce: no failed recipient found"),
])
def test_mails_that_are_not_bounces(raw, problem):
    assert parse_bounce(raw).problem.startswith(problem)
