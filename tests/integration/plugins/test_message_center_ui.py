"""The Message Center pages through the real API server, over plain HTTP: login,
permissions, CSRF, form validation, and no asset from another host. (What a person sees
and clicks is in ``test_ui_browser.py``.)"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

pytestmark = pytest.mark.server

UI = "/message-center/ui"
PAGES = ("overview", "service-level", "processing-time", "history", "tracking", "lookup",
         "accounts",
         "errors?cause=failed")
CHANGES = (("/api/accounts", {"name": "mcExecX", "label": "X", "cellId": 9}),
           ("/api/accounts/test", {"name": "mcExecX", "label": "X", "cellId": 9}),
           ("/api/accounts/mcExec2/test", {}),
           ("/api/accounts/mcExec2/enabled", {"enabled": False}))
CSRF = {"X-Requested-With": "XMLHttpRequest"}


def session(stack, username: str = "admin") -> httpx.Client:
    """A browser-like client: the JWT in Airflow's ``_token`` cookie, no Bearer header."""
    client = httpx.Client(base_url=stack.base_url, timeout=60, follow_redirects=False)
    client.cookies.set("_token", stack.token(username))
    return client


def connection_exists(stack, conn_id: str) -> bool:
    response = httpx.get(f"{stack.base_url}/api/v2/connections/{conn_id}", timeout=30,
                         headers={"Authorization": f"Bearer {stack.token()}"})
    return response.status_code == 200


def test_the_ui_is_in_airflow_navigation(airflow_stack):
    plugins = httpx.get(f"{airflow_stack.base_url}/api/v2/plugins", timeout=30, headers={
        "Authorization": f"Bearer {airflow_stack.token()}"}).json()["plugins"]
    (view,) = next(p for p in plugins if p["name"] == "message_center_api")["external_views"]
    assert (view["name"], view["destination"], view["url_route"]) == (
        "Message Center", "nav", "message-center")
    assert view["href"] == f"{UI}/overview"


def test_pages_need_an_airflow_login(airflow_stack):
    with httpx.Client(base_url=airflow_stack.base_url, timeout=60) as anonymous:
        for page in PAGES:
            response = anonymous.get(f"{UI}/{page}")
            assert response.status_code == 303, page
            location = response.headers["location"]
            assert location.startswith("/auth/login?next="), location
            assert "%2Fmessage-center%2Fui%2F" in location
        anonymous.cookies.set("_token", "not-a-jwt")
        assert anonymous.get(f"{UI}/overview").status_code == 303
        assert anonymous.get(f"{UI}/api/accounts/mcExec1/dag").status_code == 401
        for path, body in CHANGES:
            assert anonymous.post(f"{UI}{path}", json=body, headers=CSRF).status_code == 401


def test_a_viewer_reads_every_page_but_may_change_nothing(airflow_stack):
    before = airflow_stack.registry.read_text()
    with session(airflow_stack, airflow_stack.viewer_user) as viewer:
        for page in PAGES:
            assert viewer.get(f"{UI}/{page}").status_code in (200, 422), page
        accounts = viewer.get(f"{UI}/accounts").text
        assert "mcExec2" in accounts
        assert "data-account-action" not in accounts and 'id="new-account"' not in accounts
        for path, body in CHANGES:
            response = viewer.post(f"{UI}{path}", json=body, headers=CSRF)
            assert response.status_code == 403, (path, response.text)
    assert airflow_stack.registry.read_text() == before
    assert not connection_exists(airflow_stack, "mcExecX")


# role -> (account buttons shown, new-account form shown); the rules are the push API's
# (mc_airflow.authorization): test = create connections, register = that + edit the DAG,
# enable / disable = edit the account's mcSynch_<name> DAG.
ROLE_BUTTONS = {"user": ({"disable"}, False), "op": ({"test", "disable"}, True),
                "admin": ({"test", "disable"}, True)}


@pytest.mark.parametrize("role", sorted(ROLE_BUTTONS))
def test_each_role_gets_the_buttons_airflow_lets_it_use(airflow_stack, role):
    buttons, form = ROLE_BUTTONS[role]
    with session(airflow_stack, role) as client:
        page = client.get(f"{UI}/accounts")
        assert page.status_code == 200
        row = page.text.split('<tr data-account="mcExec2">', 1)[1].split("</tr>", 1)[0]
        assert set(re.findall(r'data-account-action="(\w+)"', row)) == buttons
        assert ('id="new-account"' in page.text) is form
        # Allowed: the request gets past the permission check (and changes nothing here).
        assert client.post(f"{UI}/api/accounts/mcExec2/enabled", json={"enabled": "maybe"},
                           headers=CSRF).status_code == 422
        if "test" in buttons:
            assert client.post(f"{UI}/api/accounts/mcExec2/test", json={},
                               headers=CSRF).status_code == 200


def test_a_refusal_names_the_airflow_permission_it_lacks(airflow_stack):
    before = airflow_stack.registry.read_text()
    with session(airflow_stack, "user") as user:
        tested = user.post(f"{UI}/api/accounts/mcExec2/test", json={}, headers=CSRF)
        assert tested.status_code == 403
        assert tested.json()["detail"] == (
            "Forbidden: testing an execution account's connection needs the permission to "
            "create connections (mc_execution2) in Airflow; user 'user' does not have it")
        created = user.post(f"{UI}/api/accounts", json=CHANGES[0][1], headers=CSRF)
        assert created.status_code == 403
        assert "registering an execution account" in created.json()["detail"]
    with session(airflow_stack, airflow_stack.viewer_user) as viewer:
        refused = viewer.post(f"{UI}/api/accounts/mcExec2/enabled", json={"enabled": False},
                              headers=CSRF)
        assert "edit the DAG mcSynch_mcExec2" in refused.json()["detail"]
    assert airflow_stack.registry.read_text() == before
    assert not connection_exists(airflow_stack, "mcExecX")


def test_a_change_needs_the_pages_header_and_this_origin(airflow_stack):
    before = airflow_stack.registry.read_text()
    with session(airflow_stack) as admin:
        body = {"enabled": False}
        path = f"{UI}/api/accounts/mcExec2/enabled"
        refused = [admin.post(path, json=body),  # a plain cross-site form cannot add headers
                   admin.post(path, json=body, headers={**CSRF, "Origin": "http://evil.test"}),
                   admin.post(path, json=body, headers={**CSRF, "Sec-Fetch-Site": "cross-site"})]
        assert [r.status_code for r in refused] == [403, 403, 403]
        assert "X-Requested-With" in refused[0].json()["detail"]
        assert admin.post(path, content="enabled=false", headers={
            **CSRF, "Content-Type": "application/x-www-form-urlencoded"}).status_code == 415
    assert airflow_stack.registry.read_text() == before


def test_a_bad_account_form_names_each_field_and_writes_nothing(airflow_stack,
                                                              test_deployment):
    before = airflow_stack.registry.read_text()
    execution2 = test_deployment.database_url("execution2").replace("postgresql://",
                                                                     "postgres://", 1)
    with session(airflow_stack) as admin:
        def create(**form):
            response = admin.post(f"{UI}/api/accounts", json=form, headers=CSRF)
            assert response.status_code in (409, 422), response.text
            return response.json()["errors"]

        errors = create(name="9bad", label="", cellId="300", connUri="mysql://db/x",
                        schedule="every hour")
        assert set(errors) == {"name", "label", "cellId", "connUri", "schedule"}
        assert "start with a letter" in errors["name"] and "0 to 255" in errors["cellId"]
        assert "postgres://" in errors["connUri"] and "cron" in errors["schedule"]
        errors = create(name="mcExec1", label="Again", cellId=1)
        assert "already used by account mcExec1" in errors["name"]
        assert "already used by account mcExec2" in errors["cellId"]
        errors = create(name="mcExecDown", label="Down", cellId=42,
                        connUri="postgres://nobody@127.0.0.1:1/none")
        assert "unreachable" in errors["connUri"]
        errors = create(name="mcExecWrongCell", label="Wrong", cellId=42, connUri=execution2)
        assert "cell 1" in errors["cellId"] and "cell id 42" in errors["cellId"]
        errors = create(name="mcExecNoConn", label="No connection", cellId=43)
        assert "does not exist" in errors["connUri"]
    assert airflow_stack.registry.read_text() == before
    for conn_id in ("mcExecDown", "mcExecWrongCell", "mcExecNoConn"):
        assert not connection_exists(airflow_stack, conn_id)


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value and not value.startswith(("#", "data:")):
                self.urls.append(value)


def assets_of(client: httpx.Client, path: str) -> tuple[httpx.Response, list[str]]:
    response = client.get(path)
    assert response.status_code == 200, (path, response.text[:500])
    parser = _Assets()
    parser.feed(response.text)
    # Scripts and styles named inside inline code (Swagger UI's page does that).
    inline = re.findall(r"""['"]((?:https?:)?//[^'"]+|/[^'"\s]+\.(?:js|css|png))['"]""",
                        response.text)
    return response, parser.urls + inline


def test_docs_and_pages_load_nothing_from_another_host(airflow_stack):
    host = urlsplit(airflow_stack.base_url).netloc
    with session(airflow_stack) as admin:
        for path in ("/message-center/docs", "/message-center/redoc", f"{UI}/overview",
                     f"{UI}/service-level", f"{UI}/accounts"):
            _response, urls = assets_of(admin, path)
            assert urls, path
            for url in urls:
                absolute = urljoin(f"{airflow_stack.base_url}{path}", url)
                assert urlsplit(absolute).netloc == host, (path, url)
                if absolute.endswith((".js", ".css", ".png", ".svg")):
                    assert admin.get(absolute).status_code == 200, absolute
        docs = admin.get("/message-center/docs").text
        assert "swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
        policy = admin.get(f"{UI}/overview").headers["content-security-policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy
