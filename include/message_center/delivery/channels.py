"""Render and send one message on its channel; every problem becomes an :class:`Outcome`.

A shard owns one :class:`Channels`: each channel's sender (SMTP connections, the HTTP
client, ...) is opened on first use and reused for the whole shard. Which channels exist
and how each sends is the registry's business (:mod:`message_center.channel`): this
module only routes a message to its channel's sender. :meth:`Channels.deliver` is a
coroutine, awaited by several sessions of the shard's event loop at once
(:mod:`message_center.delivery.pool`).
Rendering happens in the sender, per message, with the shared sandboxed renderer, so a
template error or a missing variable fails only that message (with a readable reason in
its delivery log) and never stops the shard.

Sandbox mode (:mod:`message_center.delivery.sandbox`): a ledger row armed as ``sandbox``
(or any row, on an instance in sandbox mode) goes to the one sandbox transport instead of
its channel's sender, whatever the channel: nothing is opened, nothing leaves.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from typing import Any, TypeGuard

from message_center import channel as registry
from message_center.channel import Channel, ChannelSender
from message_center.channel.base import AsyncChannelSender, Handing
from message_center.delivery.breaker import BreakerStore, RelayBreaker
from message_center.delivery.ledger import Attempt
from message_center.delivery.outcome import Outcome
from message_center.delivery.pool import (
    IN_FLIGHT_GRACE_SECONDS,
    RelayGate,
    RelayGates,
    SessionPool,
)
from message_center.delivery.sandbox import OFF, SandboxSettings, SandboxTransport
from message_center.rendering import RenderError, event_variables, template_event

log = logging.getLogger(__name__)


class Channels:
    """The senders of one shard.

    ``Channels(settings_by_channel, kind=...)`` with a mapping ``{channel name:
    settings}``, or ``Channels(smtp_settings, sms_settings, "rt")``: each settings
    object goes to the channel whose ``settings_type`` it is. A channel without settings
    (``None``, absent) is "not configured": its messages are retried later (an operator
    can add the connection) and then expire.

    ``sandbox``: the instance's sandbox mode and rules; on an instance in sandbox mode no
    channel's sender is ever opened (:attr:`sandboxed`)."""

    def __init__(self, *settings: Any, kind: str = "rt",
                 sandbox: SandboxSettings = OFF) -> None:
        self.settings: dict[str, Any] = {}
        for value in settings:
            if isinstance(value, Mapping):
                self.settings.update({registry.get(n).name: s for n, s in value.items()
                                      if s is not None})
            elif isinstance(value, str):
                kind = value  # the older positional shape: Channels(smtp, sms, kind)
            elif value is not None:
                self.settings[_channel_of(value).name] = value
        self.kind = kind
        self.sandbox = sandbox
        self._sandbox = SandboxTransport(sandbox)
        self._lock = threading.Lock()
        self._senders: dict[str, ChannelSender | AsyncChannelSender] = {}
        self._pool: SessionPool | None = None
        self._pool_key: tuple[int, int] | None = None

    def __enter__(self) -> Channels:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the senders (an asynchronous one in its sessions' loop), then the pool."""
        pool, self._pool, self._pool_key = self._pool, None, None
        self._close_connections(pool)
        with self._lock:
            senders, self._senders = list(self._senders.values()), {}
        for sender in senders:
            sender.close()
        if pool is not None:
            pool.close()

    def _close_connections(self, pool: SessionPool | None) -> None:
        """Close what the asynchronous senders opened in ``pool``'s event loop (their
        connections belong to it), before the pool is closed or replaced."""
        if pool is None:
            return
        for sender in list(self._senders.values()):
            if _is_async(sender):
                try:
                    pool.call(sender.aclose(), IN_FLIGHT_GRACE_SECONDS)
                except Exception as exc:  # QUIT is a courtesy: the relay copes without
                    log.warning("closing %s connections: %s", type(sender).__name__, exc)

    @property
    def sandboxed(self) -> bool:
        """Is this instance in sandbox mode (every message armed here is sandboxed)?"""
        return self.sandbox.instance

    def sender(self, channel: str) -> ChannelSender | AsyncChannelSender | None:
        """The shard's sender of ``channel`` (opened on first use); None when the channel
        is not configured."""
        found = self._senders.get(channel)
        if found is not None:
            return found
        settings = self.settings.get(channel)
        if settings is None:
            return None
        with self._lock:
            if channel not in self._senders:
                self._senders[channel] = registry.get(channel).open_sender(settings,
                                                                           self.kind)
            return self._senders[channel]

    def session_pool(self, sessions: int, *, shards: int = 1,
                     breakers: BreakerStore | None = None) -> SessionPool:
        """The shard's pool of ``sessions`` delivery sessions, kept while the settings stay
        the same (a real-time loop reuses its sessions and connections round after round).

        The providers' limits (e.g. ``max_sessions`` / ``max_messages_per_second`` of the
        SMTP connection, ``max_concurrent`` / ``max_messages_per_second`` of the SMS
        gateway) are for the whole DAG run: each of its ``shards`` shard tasks takes an
        even share (at least one session). ``breakers``: where the relays' circuit
        breakers are shared (the execution database); without it each gate has its own."""
        key = (sessions, shards)
        if self._pool is None or self._pool_key != key:
            if self._pool is not None:
                self._close_connections(self._pool)
                self._pool.close()
            self._pool = SessionPool(self.relay_gates(shards, breakers), sessions)
            self._pool_key = key
        return self._pool

    def relay_gates(self, shards: int = 1, breakers: BreakerStore | None = None
                    ) -> dict[str, RelayGate | RelayGates]:
        """One :class:`RelayGate` per configured channel (or :class:`RelayGates`, one per
        relay of a channel that sends to many), with this shard's share of the provider's
        limits and the relay's circuit breaker (in ``breakers``)."""
        gates: dict[str, RelayGate | RelayGates] = {}
        if self.sandboxed:  # no relay is contacted: no limit, no breaker
            return gates
        for name in self.settings:
            sender = self.sender(name)
            gate = sender.relay_gate(shards) if sender is not None else None
            if isinstance(gate, RelayGates):
                gate.breakers = breakers
                gates[name] = gate
            elif gate is not None:
                gate.breaker = RelayBreaker(gate.name, name, breakers)
                gates[name] = gate
        return gates

    def reconcile(self, attempt: Attempt) -> Outcome | None:
        """Ask the provider what became of a message whose worker died while sending it
        (e.g. the SMS gateway's lookup by reference); None when it cannot tell (e-mail:
        SMTP has no such question) or the channel is not configured."""
        if not registry.get(attempt.channel).reconciles or self.sandboxed:
            return None
        sender = self.sender(attempt.channel)
        return None if sender is None else sender.reconcile(attempt)

    async def deliver(self, attempt: Attempt, ready: Handing | None = None) -> Outcome:
        """Render and send, in a session coroutine of the shard's event loop; never
        raises for a message-level problem. An asynchronous sender (SMTP) is awaited in
        the loop; any other runs in a worker thread of the loop.

        ``ready`` is the barrier before the point of no return (the final "." of SMTP
        DATA, the gateway request): the shard's recorder commits there that the message
        is handed (:meth:`message_center.processing.recorder.OutcomeRecorder.handing`).
        An exception from it propagates and means "not sent"."""
        row = attempt.row
        if row["published_id"] is None:
            return Outcome.failed(f"template {attempt.template_name} version "
                                  f"{attempt.template_version} is not published here")
        variables = event_variables(template_event(row, attempt.event_id))
        name = f"{attempt.template_name} v{attempt.template_version}"
        sender: ChannelSender | AsyncChannelSender | SandboxTransport | None
        if self.sandboxed or row.get("sandbox"):
            sender = self._sandbox
        else:
            sender = self._senders.get(attempt.channel) or self.sender(attempt.channel)
        if sender is None:
            channel = registry.get(attempt.channel)
            return Outcome.retry(f"no {channel.connection_label} connection is configured "
                                 f"({channel.connection_id})")
        try:
            if _is_async(sender):
                return await sender.send_async(attempt, variables, ready)
            return await asyncio.get_running_loop().run_in_executor(
                None, sender.send, attempt, variables, ready)
        except RenderError as exc:
            return Outcome.failed(f"template {name} cannot be rendered: {exc}")
        except ValueError as exc:
            return Outcome.failed(f"message from template {name} is invalid: {exc}")


def _channel_of(settings: object) -> Channel:
    for channel in registry.all_channels():
        if channel.settings_type is not None and isinstance(settings, channel.settings_type):
            return channel
    raise TypeError(f"no registered channel takes settings of type "
                    f"{type(settings).__name__}")


def _is_async(sender: object) -> TypeGuard[AsyncChannelSender]:
    """Does ``sender`` send in the event loop (``send_async``) rather than in a thread?"""
    return callable(getattr(sender, "send_async", None))
