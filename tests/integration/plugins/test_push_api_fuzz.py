"""Schemathesis against the push API: the app the Airflow plugin mounts (Airflow's token
authentication, Airflow's auth manager, the ``mc_execution`` connection), served in process
on the real execution database. Every check schemathesis has, positive and negative examples
drawn from the OpenAPI schema, a bounded number per operation and a fixed seed, so a run is
fast and repeatable: the schema says what the API does, and the API does what it says.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import sys
from typing import Any

import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS, load_all_checks

from mc_local.localenv import PROJECT_ROOT
from message_center.events import parse_datetime

EXAMPLES = int(os.environ.get("MC_FUZZ_EXAMPLES", "40"))  # deeper runs: MC_FUZZ_EXAMPLES=500


def _plugin_app() -> FastAPI:
    """The app exactly as ``plugins/message_center_api.py`` builds it, mounted under
    ``/message-center`` like Airflow mounts it, with the auth manager initialised."""
    from airflow.api_fastapi.app import init_auth_manager

    os.environ["MC_API_GC_FREEZE"] = "false"  # no gc.freeze() in the test process
    init_auth_manager()
    spec = importlib.util.spec_from_file_location(
        "mc_fuzz_plugin", PROJECT_ROOT / "plugins" / "message_center_api.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    root = FastAPI()
    root.mount("/message-center", module.app)
    return root


def _admin_token() -> str:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin",
                                                                 role="admin"))


# The webhook routes are left out: a schema-valid URL is still refused when it points at a
# private address (what JSON Schema cannot state); they have tests of their own
# (tests/integration/message_center/api/test_webhooks_api.py, test_webhooks_server.py).
# So are the bulk actions: a schema-valid filter is refused without a criterion besides the
# queue, and an action without the dry run's count (tests/integration/plugins/
# test_actions_server.py, tests/integration/message_center/operations/).
APP = _plugin_app()
schema = schemathesis.openapi.from_asgi("/message-center/openapi.json", APP
                                        ).exclude(path_regex="^/v1/(webhooks|actions)")
load_all_checks()
ALL_CHECKS = list(CHECKS.get_all())


def _in_order(event: Any) -> Any:
    """``expiration`` not before ``scheduled``: the one rule JSON Schema cannot state (the
    API answers 422, and says so in the field's description)."""
    if not isinstance(event, dict) or not all(
            isinstance(event.get(field), str) for field in ("scheduled", "expiration")):
        return event
    try:
        scheduled = parse_datetime(event["scheduled"], "scheduled")
        expiration = parse_datetime(event["expiration"], "expiration")
    except Exception:  # not a date: a negative example, left as drawn
        return event
    if scheduled is None or expiration is None or expiration >= scheduled:
        return event
    return {**event, "scheduled": event["expiration"], "expiration": event["scheduled"]}


def _public_subscription() -> dict[str, Any]:
    """A subscription the server accepts: a P-256 public point and 16 random bytes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    encode = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()  # noqa: E731
    return {"endpoint": "https://push.example.com/wpush/v2/fuzz",
            "keys": {"p256dh": encode(point), "auth": encode(os.urandom(16))}}


PUBLIC_SUBSCRIPTION = _public_subscription()


def _with_a_public_subscription(event: Any) -> Any:
    """A drawn subscription that keeps to its schema is made one of a public push service:
    the rules JSON Schema cannot state (a host that is neither private nor malformed, a
    key that is a point of the curve) have tests of their own
    (tests/integration/message_center/channels/test_webpush_channel.py)."""
    if not isinstance(event, dict) or not isinstance(event.get("pushSubscription"), dict):
        return event
    drawn = event["pushSubscription"]
    if not isinstance(drawn.get("endpoint"), str) or not isinstance(drawn.get("keys"), dict):
        return event  # a negative example, left as drawn
    return {**event, "pushSubscription": PUBLIC_SUBSCRIPTION}


def _without_files(event: Any) -> Any:
    """No ``attachments``: what a file may be (an e-mail event's, a template that takes
    them, a listed URL host, content that matches its type) has tests of its own
    (tests/integration/message_center/channels/test_event_attachments.py)."""
    if isinstance(event, dict) and "attachments" in event:
        return {key: value for key, value in event.items() if key != "attachments"}
    return event


def _valid_rules(event: Any) -> Any:
    return _with_a_public_subscription(_in_order(_without_files(event)))


@schema.hook
def map_body(context: Any, body: Any) -> Any:
    if isinstance(body, dict) and isinstance(body.get("events"), list):
        return {**body, "events": [_valid_rules(event) for event in body["events"]]}
    return _valid_rules(body)


@schema.parametrize()
@settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_the_push_api_keeps_to_its_schema(case, execution_db):
    mapped = map_body(None, case.body)  # the coverage phase draws without the hook
    if mapped is not case.body:
        # Only when changed: assigning case.body makes schemathesis (4.32) judge the body
        # again, and it judges an absent body invalid even where the schema makes it
        # optional, so a PUT without a body would be taken for a negative case.
        case.body = mapped
    case.call_and_validate(headers={"Authorization": f"Bearer {_admin_token()}"},
                           checks=ALL_CHECKS)


def test_every_operation_is_fuzzed():
    operations = {(result.ok().method.upper(), result.ok().path)
                  for result in schema.get_all_operations()}
    assert operations == {("POST", "/v1/rtEvents"), ("POST", "/v1/batchEvents"),
                          ("GET", "/v1/events/{event_id}"), ("GET", "/v1/health"),
                          ("GET", "/v1/events/{event_id}/attachments/{position}"),
                          ("GET", "/v1/quarantine"),
                          ("GET", "/v1/suppressions"),
                          ("DELETE", "/v1/suppressions/{suppression_id}"),
                          *{(method, "/v1/quarantine/webpush")
                            for method in ("GET", "PUT", "DELETE")},
                          *{(method, f"/v1/quarantine/{channel}/{{address}}")
                            for method in ("GET", "PUT", "DELETE")
                            for channel in ("email", "sms")}}
    assert {"negative_data_rejection", "positive_data_acceptance", "ignored_auth",
            "response_schema_conformance"} <= {check.__name__ for check in ALL_CHECKS
                                               if hasattr(check, "__name__")}



def test_the_fuzzing_token_is_accepted(execution_db):
    """The cases are sent with :func:`_admin_token`; were it refused, every case would
    answer 401, which every check but the authentication one accepts: the fuzzing would
    pass without reaching one handler. So: refused without it, accepted with it."""
    from fastapi.testclient import TestClient

    with TestClient(APP) as client:
        assert client.get("/message-center/v1/quarantine").status_code == 401
        answer = client.get("/message-center/v1/quarantine",
                            headers={"Authorization": f"Bearer {_admin_token()}"})
    assert answer.status_code == 200, answer.text
    assert isinstance(answer.json()["items"], list)
