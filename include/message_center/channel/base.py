"""The :class:`Channel` interface: what a delivery channel tells the core about itself.

Kept free of imports from the domain (no SMTP, no HTTP client, no delivery): the
registry, the ledger, the push API and the template checks import it. A channel module
implements it and its sender (:class:`ChannelSender`); the core only calls these methods.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

# The delivery's types, named here without importing them (this module sits below the
# delivery): ``Attempt`` (message_center.delivery.ledger), ``Outcome``
# (message_center.delivery.outcome), ``RelayGate`` or ``RelayGates`` (one gate per relay
# of a channel that sends to many: message_center.delivery.pool).
Attempt = Any
Outcome = Any
RelayGate = Any


class UnknownChannelError(ValueError):
    """A channel name no registered channel answers to."""

    def __init__(self, name: object, known: Sequence[str]) -> None:
        self.name, self.known = name, tuple(known)
        super().__init__(f"unknown channel {name!r} (expected one of {', '.join(known)})")


#: Rendered template parts by part name (``subject``, ``html``, ``text``; ``sms``; ...).
RenderedParts = dict[str, str | None]


@dataclass(frozen=True)
class LocalSink:
    """A local stand-in for a channel's provider that ``make run`` starts (the launcher
    asks the registry for them): ``python -m <module> --port <port> <dir_flag> <dir>``."""

    name: str
    module: str
    port_env: str
    default_port: int
    dir_flag: str
    #: The folder kept next to the mail folder: the mail folder's name with "mail"
    #: replaced by this.
    dir_name: str
    #: What is kept there, for the start-up message ("SMS").
    what: str

    def port(self, environ: Mapping[str, str]) -> int:
        return int(environ.get(self.port_env) or self.default_port)

    def directory(self, mail_dir: Path) -> Path:
        return mail_dir.with_name(mail_dir.name.replace("mail", self.dir_name, 1))


class Handing(Protocol):
    """The barrier before the point of no return (the shard's recorder commits there that
    the message is handed): call it from a worker thread, or await :meth:`wait` from the
    shard's event loop. Raises when the message must not be sent."""

    def __call__(self) -> None: ...

    async def wait(self) -> None: ...


class ChannelSender(Protocol):
    """A channel's open connection(s) inside one shard, used by its delivery sessions.

    ``send`` is called in a worker thread of the shard's session pool, several at once.
    A sender may instead be asynchronous (:class:`AsyncChannelSender`: SMTP), its sends
    then being coroutines of the shard's one event loop."""

    def relay_gate(self, shards: int) -> RelayGate | None:
        """The provider's limits, this shard's share of them (None: no limit); a
        ``RelayGates`` when the channel's messages go to many relays, each capped on its
        own (Web Push: per push service)."""

    def send(self, attempt: Attempt, variables: dict[str, Any],
             ready: Callable[[], None] | None) -> Outcome:
        """Render and send one message; ``ready`` just before the point of no return.
        A render problem raises :class:`~message_center.rendering.RenderError`."""

    def reconcile(self, attempt: Attempt) -> Outcome | None:
        """What became of a message whose worker died while sending it (None: cannot
        tell)."""

    def close(self) -> None:
        """Close connections."""


class AsyncChannelSender(Protocol):
    """A channel sender whose sends are coroutines of the shard's event loop (no thread
    per session): ``send_async`` instead of ``send``; ``aclose`` closes its connections
    in that loop, before ``close``."""

    def relay_gate(self, shards: int) -> RelayGate | None: ...

    async def send_async(self, attempt: Attempt, variables: dict[str, Any],
                         ready: Handing | None) -> Outcome:
        """Render and send one message; ``await ready.wait()`` just before the point of
        no return. A render problem raises :class:`~message_center.rendering.RenderError`."""

    def reconcile(self, attempt: Attempt) -> Outcome | None: ...

    async def aclose(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class AddressPath:
    """How the API's ``/v1/quarantine/<channel>/{address}`` path states the address."""

    pattern: str
    min_length: int
    max_length: int
    description: str


class Channel(ABC):
    """One delivery channel. Subclass it, set the class attributes, implement the
    abstract methods, and register an instance (``CHANNEL = MyChannel()`` in a module of
    :mod:`message_center.channels`, or :func:`message_center.channels.register`)."""

    #: ``wishedChannel`` value, stored in every ``channel`` column.
    name: ClassVar[str]
    #: Shown to people (reports, UI filters).
    label: ClassVar[str]
    #: Sort order in lists (built-ins first).
    order: ClassVar[int] = 100
    #: The event's address on the wire (camelCase, as pushed and as ``GET /events`` shows).
    address_field: ClassVar[str]
    #: The address on the wire: its JSON schema (stated for clients), its longest text,
    #: and what the API documentation says of it.
    address_json_schema: ClassVar[Mapping[str, Any]] = {"type": "string"}
    address_max_length: ClassVar[int | None] = None
    address_doc: ClassVar[str] = ""
    #: Addresses compared and kept in lower case (quarantine, bounces).
    address_case_insensitive: ClassVar[bool] = False
    #: The event column holding the address.
    address_column: ClassVar[str] = "address"
    #: The error type of a bad address at push time.
    address_error_type: ClassVar[str] = "address_format"
    #: Words for the address: "no <noun> address on the event".
    address_noun: ClassVar[str]
    #: "an e-mail address": API summaries and messages.
    address_description: ClassVar[str]
    #: The address as a quarantine API path segment (None: given as the query parameter
    #: ``address_query``).
    address_path: ClassVar[AddressPath | None] = None
    address_query: ClassVar[str] = "address"
    #: The pattern the query parameter's value must match (what ``normalize_address``
    #: accepts; None: any text), stated in the API schema and checked there (422).
    address_query_pattern: ClassVar[str | None] = None
    #: SQL of the quarantine key of a stored address ``{address}`` when it is not the
    #: address itself (a structured address quarantined by one of its parts: a Web Push
    #: subscription by its endpoint URL); :meth:`quarantine_key` says the same in Python.
    quarantine_key_sql: ClassVar[str | None] = None
    #: The event's address as an XML element of ACC's ``<rtEvent>`` (its attributes are
    #: read by :meth:`address_from_xml`), when it is not an attribute.
    xml_element: ClassVar[str | None] = None
    #: ACC's ``wishedChannel`` codes and labels (``nms:messageType``) for this channel.
    acc_codes: ClassVar[tuple[str, ...]] = ()
    #: "an email template"; "(use <parts_hint>)" when a file sets another channel's part.
    template_noun: ClassVar[str] = ""
    parts_hint: ClassVar[str] = ""
    #: Template file fields that belong to this channel, and the ones it requires.
    template_parts: ClassVar[tuple[str, ...]] = ()
    required_parts: ClassVar[tuple[str, ...]] = ()
    #: The ``published_template`` column each part is stored in.
    template_columns: ClassVar[Mapping[str, str]] = {}
    #: Parts rendered with HTML autoescaping.
    html_parts: ClassVar[tuple[str, ...]] = ()
    #: These parts are in every template's versioned content (None when unused) so that
    #: the content hashes of versions made before the seam stay the same.
    parts_in_every_content: ClassVar[bool] = False
    #: The Airflow connection of the provider; required: a missing one fails the task
    #: (otherwise the channel's messages are retried and eventually expire).
    connection_id: ClassVar[str | None] = None
    connection_required: ClassVar[bool] = False
    #: Names the provider in "no <label> connection is configured (<id>)".
    connection_label: ClassVar[str] = ""
    #: Where a message is found at the provider (the "outcome unknown" reason says it).
    provider_reference: ClassVar[str] = ""
    #: The provider can be asked what became of a message (crash recovery).
    reconciles: ClassVar[bool] = False
    #: A "slow down" answer in an outcome's error text (outcomes without a classified
    #: answer).
    throttle_pattern: ClassVar[re.Pattern[str] | None] = None
    #: The sink ``make run`` starts for this channel (None: none).
    local_sink: ClassVar[LocalSink | None] = None
    #: The settings type this channel's sender takes (routes ``Channels(settings, ...)``).
    settings_type: ClassVar[type | None] = None

    def __repr__(self) -> str:
        return f"<channel {self.name}>"

    # --- addresses -------------------------------------------------------------------
    @abstractmethod
    def address_error(self, value: str) -> str | None:
        """Why ``value`` is not a valid address at push time (None: it is)."""

    @abstractmethod
    def normalize_address(self, value: str) -> str:
        """The stored (quarantine) form of an address; ``ValueError`` when it cannot be."""

    def seed_address_error(self, value: str) -> str | None:
        """Why a template seed's address is not one of this channel (None: fine)."""
        error = self.address_error(value)
        return None if error is None else f"{value!r}: {error}"

    def event_address(self, event: Mapping[str, Any]) -> str | None:
        """The address on a stored event row."""
        value = event.get(self.address_column)
        return value if isinstance(value, str) else None

    def quarantine_key(self, address: str) -> str:
        """The quarantine key of a stored address (the address itself by default)."""
        return address

    def address_from_xml(self, attributes: Mapping[str, str]) -> Any:
        """The wire address from the attributes of the :attr:`xml_element` element."""
        return dict(attributes)

    def xml_location(self, field: str) -> str:
        """Where the error of ``field`` (``<address_field>.<part>``) is, under the event
        element (``<xml_element>/@<attribute>``)."""
        return self.xml_element or self.address_field

    def address_on_wire(self, stored: str) -> Any:
        """The stored ``address`` column as the wire shows it (``GET /events``)."""
        return stored

    def parts_from_row(self, row: Mapping[str, Any]) -> dict[str, str | None]:
        """The template parts from a ``published_template`` row: the channel's own columns,
        else the ``parts`` JSON."""
        if self.template_columns:
            return {part: row.get(column) for part, column in self.template_columns.items()}
        stored = row.get("parts") or {}
        return {part: stored.get(part) for part in self.template_parts}

    # --- templates -------------------------------------------------------------------
    def check_template(self, values: Mapping[str, str | None], flagged: Sequence[str],
                       problem: Callable[[str | None, str], None]) -> None:
        """Channel-specific template checks; ``problem(field, message)`` reports one.
        ``values`` are the text fields read, ``flagged`` the fields already reported."""
        return None

    #: Templates of this channel may opt into tracking (``tracking``, ``mirror_page``,
    #: ``unsubscribe``: :mod:`message_center.tracking.options`).
    tracks: ClassVar[bool] = False

    #: Structured template fields this channel accepts besides its text parts (e-mail:
    #: ``attachments``); stored with the version and published in
    #: ``published_template.extras`` (``{field: value}``), handed to the sender in the row.
    extra_fields: ClassVar[tuple[str, ...]] = ()

    def parse_extra_field(self, name: str, raw: Any, base_dir: Path
                          ) -> tuple[Any, list[tuple[str, str]]]:
        """One of :attr:`extra_fields` as read from a template file in ``base_dir``: the
        value to store, and the problems as ``(field, message)``."""
        return None, [(name, f"not used by {self.template_noun}")]

    def check_extra_field(self, name: str, value: Any, variables: dict[str, Any],
                          address: str) -> None:
        """Render an extra field for a seed as the delivery would (raises
        :class:`~message_center.rendering.RenderError`)."""
        self.message_files({name: value}, variables, address)

    def files_summary(self, extras: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        """What the lookup lists of a template version's files (name template, kind,
        type; size and hash of stored files), no content."""
        return []

    def message_files(self, extras: Mapping[str, Any], variables: dict[str, Any],
                      address: str, uid: str = "seed"
                      ) -> list[tuple[str, str, bytes, bool]]:
        """Files sent with a message of this channel (e-mail attachments) as ``(name,
        content type, bytes, also an alternative body part)``; previews and proofs show
        them. Raises :class:`~message_center.rendering.RenderError`."""
        return []

    @abstractmethod
    def render(self, parts: Mapping[str, str | None], variables: dict[str, Any],
               options: Mapping[str, Any] | None = None) -> RenderedParts:
        """The template's parts rendered for an event (the delivery's renderer);
        ``options``: the template's tracking options (a preview renders sample URLs)."""

    def render_sent(self, template_row: Mapping[str, Any], variables: dict[str, Any], *,
                    log_id: int, config: Any, track: bool = True,
                    pixel: bool = True) -> tuple[RenderedParts, dict[str, str]]:
        """The message of delivery log ``log_id`` as it was sent (the tracking server's
        mirror page and click check): the parts of a ``published_template`` row rendered
        with the tracking ``config`` (:class:`message_center.tracking.tokens.TrackingConfig`),
        and the extra headers. ``track=False``: the links as the author wrote them (the
        links marked ``tracked`` in a text part keep their marks: the click check counts
        them); ``pixel=False``: no open pixel. A channel that does not track renders as usual."""
        return self.render(self.parts_from_row(template_row), variables), {}

    def preview_files(self, rendered: RenderedParts, out_dir: Path, stem: str,
                      header: str, sender: str | None, address: str) -> list[Path] | None:
        """Preview files for people (None: the generic e-mail-like preview)."""
        return None

    def proof_content(self, rendered: RenderedParts, label: str,
                      address: str) -> tuple[str | None, str | None, str | None]:
        """(subject, html, text) of the proof e-mail of a rendered template."""
        return None, None, "\n\n".join(f"{k}: {v}" for k, v in rendered.items() if v)

    #: A proof goes to the seeds' own addresses (False: ``--to`` e-mail addresses needed).
    proofs_to_seeds: ClassVar[bool] = False

    def lookup_message(self, rendered: RenderedParts, *, to: str | None,
                       sender: str | None, default_sender: str | None, log_id: int | None,
                       event_ref: str) -> dict[str, Any]:
        """The event lookup's re-rendered message (``to``, ``sender``, the parts, ...;
        ``available`` and ``channel`` are added by the caller). ``log_id`` is the
        delivery log's id (None: never delivered)."""
        return {"to": to, "sender": sender, **rendered}

    # --- delivery --------------------------------------------------------------------
    def settings_from_connection(self, conn: Mapping[str, Any]) -> Any:
        """Sender settings from an Airflow connection (host, port, login, password,
        schema, extra). Only asked of a channel with a ``connection_id``, which must
        override it (checked when the class is defined); others have no settings."""
        return None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A channel naming a connection says how to read it: refused when the class is
        defined, not when the first task of a deployment asks for its settings."""
        super().__init_subclass__(**kwargs)
        if (getattr(cls, "connection_id", None) is not None
                and cls.settings_from_connection is Channel.settings_from_connection):
            raise TypeError(f"channel class {cls.__name__} names the connection "
                            f"{cls.connection_id!r} but does not implement "
                            "settings_from_connection()")

    def transaction_seconds(self, settings: Any | None) -> float:
        """The longest one message may take at the provider with these settings (None:
        not configured); the crash recovery waits that long before calling a message
        unknown."""
        return float(getattr(settings, "timeout", 0.0) or 0.0)

    @abstractmethod
    def open_sender(self, settings: Any, kind: str) -> ChannelSender | AsyncChannelSender:
        """The shard's sender (opened on first use, closed with the shard)."""
