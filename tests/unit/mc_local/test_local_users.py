"""`make run`'s users: one admin by default, or Airflow's own
AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS, each with a password generated once and kept."""

from __future__ import annotations

import json

import pytest

from mc_local import localenv
from mc_local.localenv import USERS_VARIABLE, Deployment, parse_users

pytestmark = pytest.mark.fast


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setattr(localenv, "STATE_DIR", tmp_path)
    monkeypatch.delenv(USERS_VARIABLE, raising=False)
    return tmp_path


def test_one_admin_by_default(state):
    local = Deployment("users")
    assert local.users() == [("admin", "admin")]
    assert local.environment()[USERS_VARIABLE] == "admin:admin"
    assert json.loads(local.write_password_file().read_text()) == {
        "admin": local.admin_password()}


def test_the_environment_list_is_honoured_with_a_kept_password_each(state, monkeypatch):
    monkeypatch.setenv(USERS_VARIABLE, "admin:admin, alice:viewer,app:USER")
    local = Deployment("users")
    assert local.users() == [("admin", "admin"), ("alice", "viewer"), ("app", "user")]
    assert local.environment()[USERS_VARIABLE] == "admin:admin, alice:viewer,app:USER"
    passwords = json.loads(local.write_password_file().read_text())
    assert set(passwords) == {"admin", "alice", "app"}
    assert len(set(passwords.values())) == 3 and all(len(p) >= 24 for p in passwords.values())
    assert (state / "secrets" / "users-alice-password").stat().st_mode & 0o777 == 0o600
    # kept: the same passwords next time, for the same profile only
    assert json.loads(local.write_password_file().read_text()) == passwords
    assert Deployment("other").password("alice") != passwords["alice"]


@pytest.mark.parametrize(("spec", "message"), [
    ("alice", "needs a role"),
    ("alice:superuser", "needs a role, one of viewer, user, op, admin"),
    ("../etc:admin", "bad user name"),
    ("alice:viewer,alice:admin", "listed twice"),
    (" , ", "lists no user"),
])
def test_a_bad_list_is_refused_naming_the_entry(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_users(spec)


def test_the_jwt_secret_is_long_enough_for_hs512(state):
    short = state / "secrets" / "users-jwt"
    short.parent.mkdir(parents=True)
    short.write_text("too-short-for-hs512")
    secret = Deployment("users").environment()["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert len(secret) >= 64 and secret == short.read_text()
