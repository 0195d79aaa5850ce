"""Which URLs the server may call: host lists and the guard against server-side request
forgery (SSRF).

A push subscription's endpoint, a webhook's URL and an attachment's URL come from the
outside (event data, an API client). Calling them blindly would let anyone make the
server POST to its own loopback services, the private network or a cloud's metadata
service. So every such URL goes through :func:`check_url` right before it is called:

* A host **listed** in the caller's host list (``MC_WEBPUSH_INSECURE_HOSTS``,
  ``MC_WEBHOOK_ALLOWED_HOSTS``, ``MC_ATTACHMENT_ALLOWED_HOSTS``) may be anything,
  loopback and private addresses included (the local push service of ``make run``).
* An **unlisted** host must be public: its name is resolved and *every* address must be
  globally routable: never loopback, private, link-local, carrier-grade NAT (shared),
  multicast, unspecified, reserved or a cloud metadata address (IPv4-mapped, 6to4,
  Teredo and NAT64 IPv6 addresses are judged by the IPv4 address inside). Callers that
  only take listed hosts (attachments) say ``public=False``.
* Plain ``http`` only for a listed host, and only when the caller allows it.

A host list is comma-separated ``host`` or ``host:port`` entries, ``*.example.org`` for
every subdomain of ``example.org`` (not ``example.org`` itself), IP literals allowed
(``127.0.0.1:8027``, ``[::1]:8027``, ``::1``). An entry without a port lists every port.
Hosts are compared as written in the URL (case-insensitive, no trailing dot): listing
``127.0.0.1`` does not list ``localhost``, nor a name that resolves to it.

The module is pure apart from name resolution (``socket.getaddrinfo``; a test passes its
own resolver) and reads no setting by itself: :meth:`HostList.from_env` reads one.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: The host list of each kind of outgoing call (DESIGN.md §8).
WEBPUSH_INSECURE_HOSTS = "MC_WEBPUSH_INSECURE_HOSTS"
WEBHOOK_ALLOWED_HOSTS = "MC_WEBHOOK_ALLOWED_HOSTS"
ATTACHMENT_ALLOWED_HOSTS = "MC_ATTACHMENT_ALLOWED_HOSTS"

DEFAULT_PORTS = {"http": 80, "https": 443}

#: Cloud metadata and platform services reached from inside a VM or container. Most are
#: link-local or private anyway; Azure's wire server is not, so it is named here.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",   # AWS, GCP, Azure, OpenStack, DigitalOcean, ... instance metadata
    "169.254.170.2",     # AWS ECS task metadata
    "169.254.169.123",   # AWS time sync
    "168.63.129.16",     # Azure wire server (a public address)
    "100.100.100.200",   # Alibaba Cloud metadata
    "192.0.0.192",       # Oracle Cloud metadata
    "fd00:ec2::254",     # AWS IPv6 instance metadata
))
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


class HostListError(ValueError):
    """A host list (an environment variable) has an entry that is not a host."""

    def __init__(self, variable: str, entry: str, why: str) -> None:
        self.variable, self.entry, self.why = variable, entry, why
        super().__init__(f"{variable}: entry {entry!r} {why} (expected comma-separated "
                         "host, host:port, *.domain or IP address entries)")


class UrlRefused(ValueError):
    """The server must not call this URL. ``temporary``: the host name could not be
    resolved now (a later attempt may work); otherwise the URL itself is refused."""

    def __init__(self, url: str, reason: str, *, temporary: bool = False) -> None:
        self.url, self.reason, self.temporary = url, reason, temporary
        super().__init__(f"{reason}: {url}")


@dataclass(frozen=True)
class HostEntry:
    """One entry of a host list: a host name, ``*.domain`` (``wildcard``: ``host`` is the
    domain) or an IP address (canonical text), and a port (None: every port)."""

    host: str
    port: int | None = None
    wildcard: bool = False

    def matches(self, host: str, port: int) -> bool:
        """Does this entry list ``host`` (normalised, see :func:`normalize_host`)?"""
        if self.port is not None and self.port != port:
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host

    def __str__(self) -> str:
        host = f"*.{self.host}" if self.wildcard else self.host
        if ":" in host:  # an IPv6 address
            host = f"[{host}]"
        return host if self.port is None else f"{host}:{self.port}"


@dataclass(frozen=True)
class HostList:
    """The parsed host list of ``variable`` (empty: nothing listed)."""

    variable: str
    entries: tuple[HostEntry, ...] = ()

    @classmethod
    def parse(cls, text: str | None, variable: str) -> HostList:
        """Parse ``text``; :class:`HostListError` names the first bad entry and the
        variable. Blanks around entries and empty entries (a trailing comma) are fine."""
        entries = [_parse_entry(raw.strip(), variable) for raw in (text or "").split(",")
                   if raw.strip()]
        return cls(variable, tuple(dict.fromkeys(entries)))

    @classmethod
    def from_env(cls, variable: str, environ: Mapping[str, str] | None = None) -> HostList:
        """The host list in environment variable ``variable`` (unset: empty)."""
        env = os.environ if environ is None else environ
        return cls.parse(env.get(variable), variable)

    def lists(self, host: str, port: int) -> bool:
        """Is ``host`` (as a URL names it) on ``port`` listed?"""
        try:
            name = normalize_host(host)
        except ValueError:
            return False
        return any(entry.matches(name, port) for entry in self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __str__(self) -> str:
        return ",".join(str(entry) for entry in self.entries)


def normalize_host(host: str) -> str:
    """A host as it is compared: lower case, no trailing dot, IDNA (``xn--``) for
    non-ASCII names, IP addresses in canonical form (no brackets). ``ValueError`` when it
    is not a host name or IP address."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    ip = _ip_literal(text)
    if ip is not None:
        return str(ip)
    text = text.rstrip(".").lower()
    if not text.isascii():
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"{host!r} is not a valid host name") from exc
    labels = text.split(".")
    if not text or len(text) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{host!r} is not a valid host name")
    return text


def _ip_literal(text: str) -> IPAddress | None:
    """``text`` as an IP address (IPv6 zone ids refused), else None."""
    if "%" in text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _parse_entry(entry: str, variable: str) -> HostEntry:
    def bad(why: str) -> HostListError:
        return HostListError(variable, entry, why)

    if "://" in entry:
        raise bad("has a scheme: give the host only")
    if any(ch in entry for ch in "/?#@ \t"):
        raise bad("is not a host name: no path, user or blanks")
    host, port_text = entry, None
    if entry.startswith("["):  # [IPv6] or [IPv6]:port
        close = entry.find("]")
        if close < 0:
            raise bad("has no closing ']'")
        host, rest = entry[1:close], entry[close + 1:]
        if rest:
            if not rest.startswith(":"):
                raise bad("has text after ']' that is not ':port'")
            port_text = rest[1:]
        if not isinstance(_ip_literal(host), ipaddress.IPv6Address):
            raise bad("is not an IPv6 address in brackets")
    elif entry.count(":") > 1:  # a bare IPv6 address (no port possible without brackets)
        if _ip_literal(entry) is None:
            raise bad("is not an IPv6 address (write [address]:port for a port)")
    elif ":" in entry:
        host, port_text = entry.split(":")
    port = None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise bad(f"has port {port_text!r}, not a number from 1 to 65535")
        port = int(port_text)
    wildcard = host.startswith("*.")
    if wildcard:
        host = host[2:]
        if _ip_literal(host) is not None:
            raise bad("puts a wildcard on an IP address")
        if host.count(".") < 1:
            raise bad("would list every host of a top-level domain")
    if "*" in host:
        raise bad("has a '*' that is not a leading '*.'")
    try:
        name = normalize_host(host)
    except ValueError:
        raise bad("is not a valid host name or IP address") from None
    return HostEntry(name, port, wildcard)


# --- addresses -------------------------------------------------------------------------

def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (IPv4-mapped, 6to4, Teredo client,
    NAT64 well-known prefix), else None."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_problem(address: IPAddress | str) -> str | None:
    """Why an unlisted host must not be called at ``address`` ("loopback", "private",
    "cloud metadata", ...), or None for a public address."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    inner = embedded_ipv4(ip)
    if inner is not None:
        problem = address_problem(inner)
        return f"{problem} (inside {ip})" if problem else None
    if ip in METADATA_ADDRESSES:
        return "cloud metadata"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "carrier-grade NAT (shared)"
    if ip.is_private:
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "reserved"
    return None


Resolver = Callable[[str, int], Iterable[str]]


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (``socket.getaddrinfo``, TCP); ``OSError``
    when it does not resolve."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class Target:
    """A URL the guard let through: where it goes and whether its host is listed.
    ``addresses``: what the host resolved to (empty when not resolved)."""

    url: str
    scheme: str
    host: str
    port: int
    listed: bool
    addresses: tuple[str, ...] = ()

    @property
    def origin(self) -> str:
        """``scheme://host[:port]``: the ``aud`` of a VAPID token, for example."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = DEFAULT_PORTS[self.scheme] == self.port
        return f"{self.scheme}://{host}" if default else f"{self.scheme}://{host}:{self.port}"



def connection_problem(hosts: HostList, host: str, port: int, peer: str) -> str | None:
    """Why a connection to ``host:port`` that reached address ``peer`` must not be used
    (the name may resolve elsewhere by the time the connection is made: DNS rebinding),
    or None. A listed host may reach anything."""
    if hosts.lists(host, port):
        return None
    try:
        return address_problem(peer.split("%", 1)[0])
    except ValueError:
        return f"unknown peer address {peer!r}"


def check_url(url: str, hosts: HostList, *, public: bool = True, allow_http: bool = False,
              resolve_names: bool = True, resolver: Resolver | None = None) -> Target:
    """May the server call ``url``? Returns the :class:`Target`, else raises
    :class:`UrlRefused` saying why.

    ``hosts``: the listed hosts (anything allowed for them). ``public``: unlisted hosts
    may be called when every address they resolve to is public (False: only listed
    hosts). ``allow_http``: plain http for listed hosts (never for unlisted ones).
    ``resolve_names``: resolve host names now (False: only IP literals and ``localhost``
    names are judged, for a quick check when the URL is first accepted; the check right
    before the call must resolve)."""
    if not isinstance(url, str) or not url.strip():
        raise UrlRefused(str(url), "no URL")
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise UrlRefused(url, "the URL has blanks or control characters")
    try:
        parts = urlsplit(url)
        port_given = parts.port
    except ValueError as exc:
        raise UrlRefused(url, f"not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise UrlRefused(url, "only https URLs can be called")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UrlRefused(url, "the URL carries a user name or password")
    if not parts.hostname:
        raise UrlRefused(url, "the URL has no host")
    try:
        host = normalize_host(parts.hostname)
    except ValueError:
        raise UrlRefused(url, f"{parts.hostname!r} is not a valid host name") from None
    port = port_given if port_given is not None else DEFAULT_PORTS[scheme]
    listed = hosts.lists(host, port)
    where = f"{host}:{port}"
    if scheme == "http" and not (listed and allow_http):
        raise UrlRefused(url, "plain http is only allowed for hosts listed in "
                              f"{hosts.variable} ({where} is not)"
                         if allow_http else "only https URLs can be called")
    if listed:
        return Target(url, scheme, host, port, listed=True)
    if not public:
        raise UrlRefused(url, f"{where} is not listed in {hosts.variable}")
    literal = _ip_literal(host)
    if literal is not None:
        addresses: Sequence[str] = [str(literal)]
    elif host == "localhost" or host.endswith(".localhost"):
        addresses = ["127.0.0.1"]  # RFC 6761: always loopback, whatever DNS says
    elif not resolve_names:
        return Target(url, scheme, host, port, listed=False)
    else:
        try:
            addresses = list((resolver or resolve)(host, port))
        except (OSError, UnicodeError) as exc:
            raise UrlRefused(url, f"{host} does not resolve ({exc})", temporary=True) from None
        if not addresses:
            raise UrlRefused(url, f"{host} does not resolve", temporary=True)
    for address in addresses:
        problem = address_problem(address.split("%", 1)[0])
        if problem:
            shown = host if literal is not None else f"{host} ({address})"
            raise UrlRefused(url, f"{shown} is a {problem} address and {where} is not "
                                  f"listed in {hosts.variable}")
    return Target(url, scheme, host, port, listed=False, addresses=tuple(addresses))
