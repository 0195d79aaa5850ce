"""The channel seam: the interface a delivery channel implements, and the registry.

A channel (e-mail, SMS, ...) is one :class:`Channel` object registered by its name, the
way Airflow providers register hooks and notifiers: the core never lists channels, it
asks the registry. Everything specific to a channel lives in its own module: the address
it needs (wire field, validation, normalised form), its template parts (their checks,
rendering, preview), its Airflow connection and sender (session pool, relay caps), how a
provider's answer is told to be a "slow down", the local sink ``make run`` starts for it,
the event lookup's re-render and ACC's numeric ``wishedChannel`` codes.

The built-in channels are the modules of :mod:`message_center.channels` that define
``CHANNEL`` (found at the first lookup, so adding ``channels/webpush.py`` adds the
channel); a channel defined elsewhere (a test, a plugin) calls :func:`register`. This
module imports nothing of the domain (it sits with the foundations); the channel modules
are imported by name, when first asked for. Lookups are dict reads: the hot path
resolves a channel once per chunk or group, never with a query.

See ``docs/how-to/add-a-channel.md``.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Mapping
from typing import Any

from message_center.channel.base import (
    Channel,
    ChannelSender,
    LocalSink,
    RenderedParts,
    UnknownChannelError,
)

__all__ = [
    "Channel",
    "ChannelSender",
    "LocalSink",
    "RenderedParts",
    "UnknownChannelError",
    "acc_code_map",
    "address_nouns",
    "address_of",
    "all_channels",
    "by_address_field",
    "default",
    "event_address_sql",
    "expected",
    "get",
    "names",
    "quarantine_key_sql",
    "reconciling",
    "register",
    "unregister",
]

#: Where the built-in channels are (imported by name: the registry stays below them).
BUILTIN_PACKAGE = "message_center.channels"
_REGISTRY: dict[str, Channel] = {}
_LOCK = threading.Lock()
_loaded = False
#: The channels in order, rebuilt when the registry changes (read per pushed event).
_ORDERED: tuple[Channel, ...] = ()
_NAMES: tuple[str, ...] = ()


def _reorder() -> None:
    global _ORDERED, _NAMES
    _ORDERED = tuple(sorted(_REGISTRY.values(), key=lambda c: (c.order, c.name)))
    _NAMES = tuple(c.name for c in _ORDERED)


def _load_builtins() -> None:
    """Import every module of this package that defines ``CHANNEL`` (once)."""
    global _loaded
    if _loaded:
        return
    with _LOCK:
        if _loaded:
            return
        package = importlib.import_module(BUILTIN_PACKAGE)
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{BUILTIN_PACKAGE}.{info.name}")
            channel = getattr(module, "CHANNEL", None)
            if isinstance(channel, Channel) and channel.name not in _REGISTRY:
                _REGISTRY[channel.name] = channel
        _reorder()
        _loaded = True


def register(channel: Channel, *, replace: bool = False) -> Channel:
    """Add ``channel`` under its name; a second channel of the same name is refused
    unless ``replace`` (two channels answering to one ``wishedChannel`` is a mistake)."""
    _load_builtins()
    if not channel.name or not channel.name.isidentifier():
        raise ValueError(f"channel name {channel.name!r} must be a plain identifier")
    with _LOCK:
        if channel.name in _REGISTRY and not replace and _REGISTRY[channel.name] is not channel:
            raise ValueError(f"a channel named {channel.name!r} is already registered")
        _REGISTRY[channel.name] = channel
        _reorder()
    return channel


def unregister(name: str) -> None:
    """Remove a channel registered with :func:`register` (tests clean up with it)."""
    with _LOCK:
        _REGISTRY.pop(name, None)
        _reorder()


def get(name: str) -> Channel:
    """The channel called ``name``; :class:`UnknownChannelError` names the known ones."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownChannelError(name, names()) from None


def names() -> tuple[str, ...]:
    """The registered channel names, built-ins first in their order, then the others."""
    _load_builtins()
    return _NAMES


def all_channels() -> tuple[Channel, ...]:
    _load_builtins()
    return _ORDERED


def default() -> Channel:
    """The channel of an event that names none (ACC's default: the first by order)."""
    return all_channels()[0]


def by_address_field(field: str) -> Channel | None:
    """The channel whose address is the wire field ``field`` (None: no channel's)."""
    for channel in all_channels():
        if channel.address_field == field:
            return channel
    return None


def expected() -> str:
    """The channel names as a message lists them (quoted, the last after "or")."""
    quoted = [repr(name) for name in names()]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def event_address_sql(alias: str = "e", channel_sql: str | None = None) -> str:
    """SQL for the address an event's channel needs: ACC's channels keep theirs in their
    own column (``email``, ``mobile_phone``), the others in ``address``. ``channel_sql``:
    the address for that channel instead of the event's own (recycling's fallback)."""
    cases = " ".join(f"WHEN '{c.name}' THEN {alias}.{c.address_column}"
                     for c in all_channels() if c.address_column != "address")
    channel = channel_sql or f"{alias}.wished_channel"
    return (f"CASE {channel} {cases} ELSE {alias}.address END" if cases
            else f"{alias}.address")


def quarantine_key_sql(channel: str = "c.channel", address: str = "c.address") -> str:
    """SQL for the quarantine key of a stored address: the address itself, or what its
    channel keys it by (:attr:`Channel.quarantine_key_sql`)."""
    cases = " ".join(f"WHEN '{c.name}' THEN {c.quarantine_key_sql.format(address=address)}"
                     for c in all_channels() if c.quarantine_key_sql)
    return f"CASE {channel} {cases} ELSE {address} END" if cases else address


def address_of(event: Mapping[str, Any]) -> Any:
    """The address of a stored event (a row with ``wished_channel``, ``email``,
    ``mobile_phone``, ``address``), whatever its channel."""
    try:
        return get(event["wished_channel"]).event_address(event)
    except UnknownChannelError:
        return event.get("address")


def address_nouns() -> dict[str, str]:
    """``{channel: noun}``: "no <noun> address on the event"."""
    return {c.name: c.address_noun for c in all_channels()}


def reconciling() -> tuple[str, ...]:
    """The channels whose provider can be asked what became of a message."""
    return tuple(c.name for c in all_channels() if c.reconciles)


def guess(address: str) -> str:
    """The first channel (by order) that takes ``address`` (the last one when none does,
    so that its error says what is wrong)."""
    found = all_channels()
    for channel in found:
        try:
            channel.normalize_address(address)
        except ValueError:
            continue
        return channel.name
    return found[-1].name


def content_parts(channel: str) -> tuple[str, ...]:
    """The parts in the versioned content of a ``channel`` template: its own, and those
    every content has carried since before the seam (so that hashes stay the same)."""
    own = get(channel).template_parts
    return tuple(dict.fromkeys([
        *(part for c in all_channels() if c.parts_in_every_content
          for part in c.template_parts), *own]))


def part_fields() -> tuple[str, ...]:
    """Every registered channel's template parts, in channel order."""
    return tuple(dict.fromkeys(part for c in all_channels() for part in c.template_parts))


def acc_code_map() -> dict[str, str]:
    """ACC's ``wishedChannel`` values (numeric codes and labels, lower case) -> channel."""
    codes: dict[str, str] = {}
    for channel in all_channels():
        for code in (*channel.acc_codes, channel.name):
            codes.setdefault(code.lower(), channel.name)
    return codes
