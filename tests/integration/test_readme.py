"""The walk-through of the README and the documentation works as written: its command
blocks for a running deployment are read from README.md and the pages under docs/, and run
by bash against the test deployment (the session's `airflow standalone`, the real SMTP and
SMS sinks), and their outcomes checked.

A block is run when a ``<!-- readme-test: NAME -->`` comment precedes its code fence, in
whichever of those files it lives (the README keeps the first steps, the docs pages the
rest); the set of names is fixed here, so a block cannot silently drop out, and a name may
appear only once across all the files. Only what differs between the demo and the test
deployment is rewritten: the API port, the profile's password file and the sink folders;
and a fixed wait before looking at a result is dropped, since the test polls for it.
An edit that breaks an example breaks ``make test``.

The blocks that need the running Airflow run here, in a new user's order; the ones that do
not (templates, accounts: :data:`WITHOUT_AIRFLOW`) run in test_readme_local.py, a module
any pytest worker may take, so that they are off the Airflow stack's long chain of tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from mc_local.localenv import PROJECT_ROOT, STATE_DIR

README = PROJECT_ROOT / "README.md"
DOCS = PROJECT_ROOT / "docs"
BLOCK = re.compile(r"<!-- readme-test: (?P<name>[\w-]+)[^>]*-->\n```bash\n(?P<body>.*?)\n```",
                   re.S)
#: The walk-through, in a new user's order.
WALK_THROUGH = ("watch", "mc-push", "curl", "templates", "accounts", "second-terminal",
                "backfill")
#: Its blocks that need no running Airflow (test_readme_local.py runs them).
WITHOUT_AIRFLOW = ("templates", "accounts")
RT_DAG = "rtEventsProcessing"
ARCHIVE_DAG = "mcSynch_mcExec1"


def walk_through_files() -> list[Path]:
    """The README and every documentation page: where the walk-through blocks may live."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def readme_blocks() -> dict[str, str]:
    found: dict[str, str] = {}
    where: dict[str, Path] = {}
    for path in walk_through_files():
        for match in BLOCK.finditer(path.read_text(encoding="utf-8")):
            assert match["name"] not in found, (
                f"two README blocks named {match['name']}: in {where[match['name']]} and "
                f"{path}")
            found[match["name"]] = match["body"]
            where[match["name"]] = path
    return found


@pytest.mark.fast
def test_every_walk_through_block_is_marked():
    assert sorted(readme_blocks()) == sorted(WALK_THROUGH)


def numbers_as_n(line: str) -> str:
    return re.sub(r"\d+(\.\d+)?", "N", line)


def comment_after(block: str, command: str) -> str:
    """The ``# ...`` line right after the first line of ``block`` containing ``command``."""
    lines = block.splitlines()
    start = next(i for i, line in enumerate(lines) if command in line)
    comment = next(line for line in lines[start + 1:] if line.startswith("# "))
    return comment[2:].split("   ")[0].strip()  # text after a run of spaces is a remark


class Walk:
    """Runs README blocks with bash in a scratch folder that looks like the project root."""

    def __init__(self, cwd: Path, env: dict[str, str], replacements: dict[str, str]) -> None:
        self.cwd, self.env, self.replacements = cwd, env, replacements
        self.blocks = readme_blocks()

    def run(self, name: str) -> subprocess.CompletedProcess[str]:
        script = self.blocks[name]
        for old, new in self.replacements.items():
            script = script.replace(old, new)
        started = time.monotonic()
        result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=self.cwd,
                                env=self.env, capture_output=True, text=True, timeout=600)
        print(f"README block {name!r}: {time.monotonic() - started:.1f} s")  # for -s runs
        assert result.returncode == 0, (
            f"README block {name!r} failed ({result.returncode}):\n{script}\n--- stdout\n"
            f"{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}")
        return result


def _polled(check):
    try:
        return check()
    except httpx.TimeoutException:  # a loaded API server: ask again, until the deadline
        return None


def wait_for(what: str, check, timeout: float = 120, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while not (result := _polled(check)):
        if time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log else ""
            raise AssertionError(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.5)
    return result


def statuses(engine, kind: str = "rt") -> dict[int, str]:
    with engine.connect() as conn:
        return dict(conn.execute(text(f"SELECT id, status FROM {kind}_event")).all())


def make_walk(test_deployment, smtp_sink, sms_sink, tmp_path: Path, registry: Path) -> Walk:
    """A scratch project folder where the blocks run as a new user runs them, the
    execution account registry being ``registry`` (never the repository's)."""
    project = tmp_path / "project"  # events.jsonl, post.json land here
    project.mkdir()
    (project / ".venv").symlink_to(Path(sys.executable).parent.parent)
    (project / ".mc").symlink_to(STATE_DIR)
    env = {key: value for key, value in os.environ.items()
           if key not in ("MC_API_PASSWORD", "MC_API_TOKEN")}
    env["MC_ACCOUNT_REGISTRY"] = str(registry)
    replacements = {
        "127.0.0.1:8080": f"127.0.0.1:{test_deployment.api_port}",
        ".mc/secrets/run-": f".mc/secrets/{test_deployment.profile}-",
        ".mc/mail": str(smtp_sink.mail_dir),
        ".mc/sms": str(sms_sink.sms_dir),
        # A reader waits a few seconds before looking; the test polls for the outcome
        # (events Sent, messages received) right after the blocks instead.
        "sleep 5; ": "",
    }
    return Walk(project, env, replacements)


@pytest.fixture
def walk(airflow_stack, test_deployment, execution_db, control_db, smtp_sink, sms_sink,
         tmp_path):
    """The demo as a new user has it: templates published, the real-time loop running."""
    from mc_local.launcher import publish_to_deployment

    api = httpx.Client(base_url=f"{airflow_stack.base_url}/api/v2", timeout=30,
                       headers={"Authorization": f"Bearer {airflow_stack.token()}"})
    for dag_id in (RT_DAG, ARCHIVE_DAG):
        wait_for(f"{dag_id} to be parsed", lambda d=dag_id: api.get(
            f"/dags/{d}").status_code == 200, 240, airflow_stack.log_path)
    publish_to_deployment(test_deployment)
    api.patch(f"/dags/{RT_DAG}", json={"is_paused": False}).raise_for_status()
    wait_for("a real-time shard to run", lambda: api.get(
        f"/dags/{RT_DAG}/dagRuns/~/taskInstances",
        params={"task_id": "link_render_deliver", "state": "running"},
    ).json().get("total_entries", 0) >= 1, 240, airflow_stack.log_path)
    try:
        yield make_walk(test_deployment, smtp_sink, sms_sink, tmp_path, airflow_stack.registry)
    finally:
        api.patch(f"/dags/{RT_DAG}", json={"is_paused": True})
        for run in api.get(f"/dags/{RT_DAG}/dagRuns",
                           params={"state": "running"}).json().get("dag_runs", []):
            api.patch(f"/dags/{RT_DAG}/dagRuns/{run['dag_run_id']}", json={"state": "failed"})

        def loops_stopped() -> bool:  # no shard left to take later tests' events
            with execution_db.connect() as conn:
                return bool(conn.execute(text(
                    "SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = "
                    "current_database() AND query IN ('LISTEN mc_rt_events', "
                    "'LISTEN mc_batch_events')")).scalar_one())

        wait_for("the shard loops to stop", loops_stopped, 120)


def test_the_readme_walk_through_works_verbatim(walk, execution_db, control_db, smtp_sink,
                                                sms_sink):
    blocks = walk.blocks

    # Watch events go from Pending to Sent: the order e-mail and the SMS are delivered.
    watch = walk.run("watch")
    pushed = [json.loads(line) for line in watch.stdout.splitlines() if line.startswith("{")]
    assert len(pushed) == 2
    assert numbers_as_n(json.dumps(pushed[0])) == numbers_as_n(
        comment_after(blocks["watch"], "--type ORDER_CONFIRMED"))
    order = pushed[0]["id"]

    # mc push: "42.00" accepted (total is declared a number), the file pushed once.
    mc_push = walk.run("mc-push")
    answers = [json.loads(line) for line in mc_push.stdout.splitlines() if line.startswith("{")]
    assert len(answers) == 2 and all(a["status"] == "pending" for a in answers)
    printed = [line for line in mc_push.stderr.splitlines() if line.strip()]
    assert numbers_as_n(printed[0]) == numbers_as_n(
        comment_after(blocks["mc-push"], "--file events.jsonl --idempotency-key"))
    assert printed[1] == comment_after(blocks["mc-push"], "# again: nothing new")
    assert len(statuses(execution_db, "batch")) == 2

    # curl: the GET finds the event the POST created, Sent.
    curl = walk.run("curl")
    post_line, get_line = [line for line in curl.stdout.splitlines() if line.strip()]
    assert numbers_as_n(post_line) == numbers_as_n(comment_after(blocks["curl"], "rtEvents"))
    found = json.loads(get_line)
    assert found["id"] == json.loads(post_line)["id"]
    assert (found["type"], found["ctx"]["total"]) == ("ORDER_CONFIRMED", 42.0)
    shown = comment_after(blocks["curl"], "/events/$ID")
    assert all(f'"{key}":' in get_line for key in re.findall(r'"(\w+)":', shown))

    orders = [order, answers[0]["id"], found["id"]]
    assert len(statuses(execution_db)) == 5  # 3 orders and 2 SMS, all real-time
    wait_for("the README's events to be Sent", lambda: set(
        statuses(execution_db).values()) == {"sent"}, 60)
    with execution_db.connect() as conn:
        assert set(conn.execute(text("SELECT id FROM rt_event WHERE type = 'ORDER_CONFIRMED'"))
                   .scalars()) == set(orders)
    wait_for("the README's e-mails", lambda: {"alice@example.com", "jane@example.com"} <= {
        str(m["To"]) for m in smtp_sink.messages()}, 30)
    wait_for("the README's SMS", lambda: {"+33612345678"} == {
        m["to"] for m in sms_sink.messages()}, 30)

    # (templates, accounts: test_readme_local.py.)
    # The second terminal's backfill archives the demo rows of its two hours; the Archiving
    # section's one, run right after it, does not crash and leaves the archive identical.
    walk.run("second-terminal")
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    window = (hour - timedelta(hours=3), hour - timedelta(hours=1))  # both runs' hours
    with execution_db.connect() as conn:
        demo = set(conn.execute(text(
            "SELECT id FROM rt_event WHERE last_modified >= :start AND last_modified < :end"),
            {"start": window[0], "end": window[1]}).scalars())
    assert len(demo) >= 40  # the demo day's two hours

    def archive() -> list[list[tuple]]:  # the window's rows (an hourly run may add others)
        with control_db.connect() as conn:
            return [[tuple(row) for row in conn.execute(text(sql), {
                "ids": sorted(demo), "start": window[0], "end": window[1]})] for sql in (
                "SELECT * FROM archived_event WHERE cell_id = 0 AND id = ANY(:ids) ORDER BY id",
                "SELECT * FROM archived_delivery_log WHERE cell_id = 0 "
                "AND event_id = ANY(:ids) ORDER BY id",
                "SELECT * FROM event_stats_hourly WHERE cell_id = 0 AND hour >= :start "
                "AND hour < :end ORDER BY hour, event_kind, event_type, channel, status")]

    archived = archive()
    events, logs, statistics = archived
    assert {row[1] for row in events} == demo
    assert logs and {row[3] for row in logs} <= demo  # their delivery logs too
    assert {row[0] for row in statistics} == {window[0], window[0] + timedelta(hours=1)}
    walk.run("backfill")
    # Nothing was written again: archived_at included, and each hour's statistics.
    assert archive() == archived
