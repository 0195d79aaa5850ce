"""A shard's SMTP sessions are coroutines of one event loop (issue 24): many messages in
flight on one thread, and a relay stalling after the final "." of one message holds
that session only - the others keep sending, and the stalled one is an unknown outcome."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest
from relay_support import STALL

from message_center.delivery.outcome import Outcome
from message_center.delivery.pool import Dispatch, SessionPool
from message_center.delivery.smtp import SmtpSession, SmtpSettings, build_email


def _attempts(recipients: list[str]) -> list[SimpleNamespace]:
    return [SimpleNamespace(log_id=n, channel="email", address=to, row={})
            for n, to in enumerate(recipients, 1)]


@pytest.mark.fast
def test_many_sessions_run_at_once_on_one_thread():
    in_flight, most, threads = 0, 0, set()

    async def send(attempt):
        nonlocal in_flight, most
        threads.add(threading.get_ident())
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)  # a slow relay's reply
        in_flight -= 1
        return Outcome.sent(str(attempt.log_id))

    sent: list[int] = []
    dispatch = Dispatch(_attempts([f"c{n}@example.test" for n in range(64)]))  # type: ignore[arg-type]
    with SessionPool({}, sessions=16) as pool:
        pool.run(dispatch, send, lambda attempt, outcome: sent.append(attempt.log_id))
    assert sorted(sent) == list(range(1, 65))
    assert most == 16  # every session had a message in flight at once
    assert len(threads) == 1 and threading.get_ident() not in threads  # the pool's loop


def test_a_stall_after_the_dot_holds_one_session_and_the_others_keep_sending(relay):
    relay.after_dot = 1
    settings = SmtpSettings(port=relay.port, data_termination_timeout=1.5)
    idle: list[SmtpSession] = []
    sessions: list[SmtpSession] = []

    async def send(attempt):
        session = idle.pop() if idle else SmtpSession(settings)
        if session not in sessions:
            sessions.append(session)
        mid, data = build_email(log_id=attempt.log_id, sender="shop@example.test",
                                recipient=attempt.address, subject="Hi", html=None,
                                text="Hello")
        try:
            return await session.send_bytes(data, mid, "shop@example.test", attempt.address)
        finally:
            idle.append(session)

    outcomes: dict[str, Outcome] = {}
    order: list[str] = []

    def report(attempt, outcome):
        outcomes[attempt.address] = outcome
        order.append(attempt.address)

    others = [f"user{n}@example.test" for n in range(1, 31)]
    dispatch = Dispatch(_attempts([STALL, *others]))  # type: ignore[arg-type]
    with SessionPool({}, sessions=4) as pool:
        pool.run(dispatch, send, report)

        async def close() -> None:
            await asyncio.gather(*(s.close() for s in sessions))

        pool.call(close())
    stalled = outcomes[STALL]
    assert (stalled.status, stalled.failure_class) == ("failed", "unknown")
    assert "after the final '.'" in (stalled.error or "")
    assert all(outcomes[to].status == "sent" for to in others)
    assert order[-1] == STALL  # the others went through while it waited for its reply
    assert relay.count(STALL) == 1 and {relay.count(to) for to in others} == {1}


def test_a_send_interrupted_in_a_session_reaches_the_caller_and_keeps_the_rest():
    calls = 0

    async def send(attempt):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt  # like Airflow's SIGTERM handler in a send
        return Outcome.sent(None)

    sent: list[int] = []
    dispatch = Dispatch(_attempts([f"c{n}@example.test" for n in range(10)]))  # type: ignore[arg-type]
    with SessionPool({}, sessions=1) as pool, pytest.raises(KeyboardInterrupt):
        pool.run(dispatch, send, lambda attempt, outcome: sent.append(attempt.log_id))
    assert sent == [1, 2]
    assert [a.log_id for a in dispatch.unsent()] == list(range(4, 11))  # 3 was in hand
