"""Airflow connections -> delivery settings (resolved from AIRFLOW_CONN_* like in tasks)."""

from __future__ import annotations

import json
import os

import pytest

from mc_airflow.delivery import processing_settings, sms_settings, smtp_settings


def test_smtp_default_of_the_test_deployment(test_deployment):
    settings = smtp_settings()
    assert (settings.host, settings.port) == ("127.0.0.1", test_deployment.smtp_port)
    assert not settings.use_ssl and not settings.starttls
    assert settings.from_email == "Message Center <no-reply@message-center.test>"


def test_smtp_connection_defaults_follow_the_airflow_smtp_provider(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_TLS", json.dumps({
        "conn_type": "smtp", "host": "mail.example.com", "login": "mc", "password": "s3cret",
        "extra": {"disable_ssl": True, "timeout": 5}}))
    settings = smtp_settings("smtp_tls")
    assert (settings.starttls, settings.use_ssl, settings.port) == (True, False, 587)
    assert (settings.login, settings.password, settings.timeout) == ("mc", "s3cret", 5.0)
    assert "s3cret" not in repr(settings)
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_SSL", json.dumps({
        "conn_type": "smtp", "host": "mail.example.com"}))
    assert smtp_settings("smtp_ssl").use_ssl and smtp_settings("smtp_ssl").port == 465


def test_sms_gateway_connection():
    settings = sms_settings()
    assert settings is not None
    assert settings.base_url == f"http://127.0.0.1:{os.environ['MC_SMS_PORT']}"
    assert (settings.path, settings.sender) == ("/messages", "MsgCenter")


def test_relay_limits_come_from_the_connection_extras(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_LIMITED", json.dumps({
        "conn_type": "smtp", "host": "mail.example.com",
        "extra": {"max_sessions": "20", "max_messages_per_second": 150.5}}))
    settings = smtp_settings("smtp_limited")
    assert (settings.max_sessions, settings.max_messages_per_second) == (20, 150.5)
    assert (smtp_settings().max_sessions, smtp_settings().max_messages_per_second) == (
        None, None)
    monkeypatch.setenv("AIRFLOW_CONN_SMS_LIMITED", json.dumps({
        "conn_type": "http", "host": "sms.example.com",
        "extra": {"max_concurrent": 4, "max_messages_per_second": "30"}}))
    gateway = sms_settings("sms_limited")
    assert gateway is not None
    assert (gateway.max_concurrent, gateway.max_messages_per_second) == (4, 30.0)


@pytest.mark.parametrize(("conn_id", "extra", "message"), [
    ("smtp_bad", {"max_sessions": "lots"},
     "SMTP connection extra max_sessions: 'lots' is not a positive whole number"),
    ("smtp_bad", {"max_sessions": 2.5},
     "SMTP connection extra max_sessions: 2.5 is not a positive whole number"),
    ("smtp_bad", {"max_messages_per_second": 0},
     "SMTP connection extra max_messages_per_second: 0 is not a positive number"),
    ("sms_bad", {"max_concurrent": -1},
     "SMS gateway connection extra max_concurrent: -1 is not a positive whole number"),
])
def test_a_bad_relay_limit_names_the_connection_and_the_extra(monkeypatch, conn_id, extra,
                                                              message):
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
        "conn_type": "smtp" if conn_id.startswith("smtp") else "http",
        "host": "relay.example.com", "extra": extra}))
    read = smtp_settings if conn_id.startswith("smtp") else sms_settings
    with pytest.raises(ValueError) as error:
        read(conn_id)
    assert str(error.value) == message


def test_a_missing_sms_gateway_means_sms_is_not_configured():
    assert sms_settings("no_such_gateway") is None


@pytest.mark.fast
def test_params_become_validated_settings():
    settings = processing_settings({"shards": "3", "routing_batch_size": 500, "other": 1})
    assert (settings.shards, settings.routing_batch_size) == (3, 500)
    with pytest.raises(ValueError, match="processing setting shards"):
        processing_settings({"shards": 999})


def test_stop_signal_turns_on_with_sigterm_and_restores_the_handler():
    import signal

    from mc_airflow.delivery import StopSignal

    previous = signal.getsignal(signal.SIGTERM)
    calls = []
    signal.signal(signal.SIGTERM, lambda *args: calls.append(args))  # like Airflow's on_kill
    try:
        with StopSignal() as should_stop:
            assert not should_stop()
            os.kill(os.getpid(), signal.SIGTERM)
            assert should_stop() and len(calls) == 1  # the previous handler still runs
        assert signal.getsignal(signal.SIGTERM) is not None
        os.kill(os.getpid(), signal.SIGTERM)
        assert len(calls) == 2  # restored
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_sending_timeout_follows_from_the_relays_timeouts(monkeypatch):
    """The recovery must not call a message unknown while its session may still wait for
    the relay: with RFC 5321's timeouts (smtp_default sets none here) that is 1830 s + a
    10 % margin; shorter relay timeouts leave the DAG's value, the floor."""
    assert processing_settings({}).sending_timeout_seconds == 1830 + 183
    assert processing_settings({"sending_timeout_seconds": 5000}
                               ).sending_timeout_seconds == 5000
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": 25, "extra": {
            "disable_ssl": True, "disable_tls": True, "timeout": 5, "greeting_timeout": 10,
            "mail_timeout": 10, "rcpt_timeout": 10, "data_init_timeout": 10,
            "data_block_timeout": 10, "data_termination_timeout": 10}}))
    assert processing_settings({}).sending_timeout_seconds == 600
    assert processing_settings({}).claim_lease_seconds == 1_800


def test_in_sandbox_mode_the_shards_senders_deliver_nothing(monkeypatch, execution_db,
                                                             smtp_sink):
    """MC_SANDBOX=1 on a worker: the senders a processing task opens (``open_channels``,
    what both processing DAGs call) are the sandbox's, with the rules of MC_SANDBOX_RULES;
    the events are processed and logged as in production and the relay gets nothing."""
    from processing_factory import delivery_logs, events, insert_events, publish_templates

    from mc_airflow.delivery import open_channels
    from message_center.processing import ProcessingSettings, deliver_shard, split_queue

    monkeypatch.setenv("MC_SANDBOX", "1")
    monkeypatch.setenv("MC_SANDBOX_RULES", '{"hard": ["*@hard.test"]}')
    publish_templates(execution_db)
    ids = [*insert_events(execution_db, "batch", 2),
           *insert_events(execution_db, "batch", 1, email="nobody@hard.test")]
    settings = ProcessingSettings(shards=1)
    with open_channels("batch") as channels:
        assert channels.sandboxed and channels.settings == {}  # no provider is even read
        for claim in split_queue(execution_db, "batch", settings):
            deliver_shard(execution_db, claim, settings, channels, copy_status=True)
    assert smtp_sink.messages() == []
    rows = events(execution_db, "batch", ids)
    assert [row["status"] for row in rows] == ["sent", "sent", "failed"]
    assert all(row["sandbox"] for row in rows)
    logs = delivery_logs(execution_db)
    assert all(log["sandbox"] for log in logs)
    assert [log["failure_class"] for log in logs] == [None, None, "hard"]

    monkeypatch.setenv("MC_SANDBOX", "maybe")  # a task fails before sending anything
    with pytest.raises(ValueError, match=r"MC_SANDBOX must be 1 or 0 .*'maybe'"):
        open_channels("batch")
