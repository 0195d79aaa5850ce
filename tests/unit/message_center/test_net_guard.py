"""The host lists and the SSRF guard: what the server may call, and the error a bad list
or a refused URL gives. No network: IP literals, ``localhost`` and a stub resolver that
stands for DNS (the only part replaced: what a name resolves to is the input here)."""

from __future__ import annotations

import pytest

from message_center.net_guard import (
    WEBPUSH_INSECURE_HOSTS,
    HostEntry,
    HostList,
    HostListError,
    UrlRefused,
    address_problem,
    check_url,
    connection_problem,
    embedded_ipv4,
)

pytestmark = pytest.mark.fast  # no database, no server: `make test-fast`

VAR = WEBPUSH_INSECURE_HOSTS


def hosts(text: str = "") -> HostList:
    return HostList.parse(text, VAR)


def dns(table: dict[str, list[str]]):
    """A resolver answering from ``table`` (a name missing from it does not resolve)."""
    def resolver(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(f"[Errno -2] Name or service not known: {host}")
        return table[host]
    return resolver


# --- host lists ---------------------------------------------------------------------------

def test_a_host_list_reads_names_ports_wildcards_and_ip_literals():
    parsed = hosts(" push.example.org , Localhost:8027,*.Example.NET,127.0.0.1:8027, "
                   "[::1]:8027, ::1, 10.0.0.5, push.example.org, ")
    assert parsed.entries == (
        HostEntry("push.example.org"),
        HostEntry("localhost", 8027),
        HostEntry("example.net", wildcard=True),
        HostEntry("127.0.0.1", 8027),
        HostEntry("::1", 8027),
        HostEntry("::1"),
        HostEntry("10.0.0.5"),
    )
    assert str(parsed) == ("push.example.org,localhost:8027,*.example.net,127.0.0.1:8027,"
                           "[::1]:8027,[::1],10.0.0.5")


def test_an_empty_or_unset_host_list_lists_nothing():
    assert not hosts("")
    assert not hosts(" , ")
    assert not HostList.from_env(VAR, {})
    assert HostList.from_env(VAR, {VAR: "localhost:8027"}).lists("localhost", 8027)


@pytest.mark.parametrize(("entry", "why"), [
    ("http://push.example.org", "has a scheme"),
    ("push.example.org/path", "no path"),
    ("user@push.example.org", "no path, user"),
    ("push.example.org:0", "port '0'"),
    ("push.example.org:65536", "port '65536'"),
    ("push.example.org:http", "port 'http'"),
    ("push.example.org:", "port ''"),
    ("a:b:c", "is not an IPv6 address"),
    ("[::1", "no closing ']'"),
    ("[::1]8027", "not ':port'"),
    ("[push.example.org]:443", "not an IPv6 address in brackets"),
    ("*.org", "every host of a top-level domain"),
    ("*", "'*' that is not a leading '*.'"),
    ("push.*.example.org", "'*' that is not a leading '*.'"),
    ("*push.example.org", "'*' that is not a leading '*.'"),
    ("*.127.0.0.1", "wildcard on an IP address"),
    ("-bad-.example.org", "not a valid host name"),
    ("push..example.org", "not a valid host name"),
])
def test_a_bad_entry_is_named_with_the_variable(entry, why):
    with pytest.raises(HostListError) as caught:
        hosts(f"localhost:8027, {entry}")
    message = str(caught.value)
    assert message.startswith(f"{VAR}: entry {entry!r} ")
    assert why in message
    assert caught.value.entry == entry and caught.value.variable == VAR


def test_entries_match_host_and_port_like_the_url_says():
    listed = hosts("localhost:8027, *.push.example.org, 10.1.2.3, [::1]:9000")
    assert listed.lists("localhost", 8027)
    assert listed.lists("LOCALHOST.", 8027)
    assert not listed.lists("localhost", 8028)  # a port in the entry is the only one
    assert listed.lists("a.push.example.org", 443)
    assert listed.lists("a.b.push.example.org", 8443)
    assert not listed.lists("push.example.org", 443)  # *.domain: subdomains only
    assert not listed.lists("evilpush.example.org", 443)
    assert listed.lists("10.1.2.3", 1)
    assert listed.lists("[::1]", 9000)
    assert listed.lists("0:0:0:0:0:0:0:1", 9000)  # IP literals in canonical form
    assert not listed.lists("127.0.0.1", 8027)  # listing localhost does not list its address


# --- addresses ----------------------------------------------------------------------------

@pytest.mark.parametrize(("address", "problem"), [
    ("127.0.0.1", "loopback"),
    ("127.200.0.9", "loopback"),
    ("::1", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.5.4", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("fd12:3456::1", "private"),
    ("169.254.10.10", "link-local"),
    ("fe80::1", "link-local"),
    ("100.64.0.1", "carrier-grade NAT (shared)"),
    ("100.127.255.254", "carrier-grade NAT (shared)"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("169.254.169.254", "cloud metadata"),
    ("168.63.129.16", "cloud metadata"),
    ("100.100.100.200", "cloud metadata"),
    ("fd00:ec2::254", "cloud metadata"),
    ("240.0.0.1", "private"),
    ("255.255.255.255", "private"),
    ("192.0.2.10", "private"),  # documentation range: not routable
    ("::ffff:127.0.0.1", "loopback (inside ::ffff:7f00:1)"),
    ("::ffff:169.254.169.254", "cloud metadata (inside ::ffff:a9fe:a9fe)"),
    ("::ffff:10.0.0.1", "private (inside ::ffff:a00:1)"),
    ("2002:7f00:1::", "loopback (inside 2002:7f00:1::)"),  # 6to4 of 127.0.0.1
    ("64:ff9b::a9fe:a9fe", "cloud metadata (inside 64:ff9b::a9fe:a9fe)"),  # NAT64
    ("2001:db8::1", "private"),
])
def test_non_public_addresses_are_named(address, problem):
    assert address_problem(address) == problem


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "172.32.0.1", "100.128.0.1",
                                     "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address):
    assert address_problem(address) is None


def test_embedded_ipv4_reads_mapped_6to4_teredo_and_nat64():
    assert str(embedded_ipv4(__import__("ipaddress").ip_address("::ffff:10.1.2.3"))) == \
        "10.1.2.3"
    ip = __import__("ipaddress").ip_address
    assert str(embedded_ipv4(ip("2002:a01:203::1"))) == "10.1.2.3"
    assert str(embedded_ipv4(ip("64:ff9b::7f00:1"))) == "127.0.0.1"
    # Teredo: the client's address is stored inverted in the last 32 bits.
    assert str(embedded_ipv4(ip("2001:0:4136:e378:8000:63bf:3fff:fdd2"))) == "192.0.2.45"
    assert embedded_ipv4(ip("2606:4700::1")) is None
    assert embedded_ipv4(ip("8.8.8.8")) is None


# --- URLs ---------------------------------------------------------------------------------

PUBLIC = dns({"push.example.org": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]})


def test_a_public_https_endpoint_passes_with_what_it_resolved_to():
    target = check_url("https://push.example.org/wpush/v2/abc", hosts(), resolver=PUBLIC)
    assert (target.scheme, target.host, target.port, target.listed) == (
        "https", "push.example.org", 443, False)
    assert target.addresses == ("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c")
    assert target.origin == "https://push.example.org"


@pytest.mark.parametrize(("url", "problem"), [
    ("https://127.0.0.1:8027/push/x", "127.0.0.1 is a loopback address"),
    ("https://[::1]/push/x", "::1 is a loopback address"),
    ("https://[::ffff:127.0.0.1]/push/x", "::ffff:7f00:1 is a loopback (inside"),
    ("https://localhost:8027/push/x", "localhost (127.0.0.1) is a loopback address"),
    ("https://api.localhost/push/x", "api.localhost (127.0.0.1) is a loopback address"),
    ("https://169.254.169.254/latest/meta-data/", "is a cloud metadata address"),
    ("https://10.0.0.8/push", "10.0.0.8 is a private address"),
    ("https://100.64.1.1/push", "is a carrier-grade NAT (shared) address"),
    ("https://[fe80::1]/push", "is a link-local address"),
    ("https://224.0.0.251/push", "is a multicast address"),
    ("https://0.0.0.0/push", "is a unspecified address"),
])
def test_an_unlisted_non_public_endpoint_is_refused(url, problem):
    with pytest.raises(UrlRefused) as caught:
        check_url(url, hosts("push.example.org"), resolver=PUBLIC)
    assert problem in caught.value.reason
    assert f"not listed in {VAR}" in caught.value.reason
    assert not caught.value.temporary


def test_every_resolved_address_is_checked():
    """A name with one public and one private address (DNS rebinding, split horizon)
    is refused: the connection could go to either."""
    resolver = dns({"mixed.example.org": ["93.184.215.14", "10.0.0.1"],
                    "meta.example.org": ["169.254.169.254"],
                    "mapped.example.org": ["::ffff:192.168.0.1"]})
    with pytest.raises(UrlRefused, match=r"mixed.example.org \(10.0.0.1\) is a private"):
        check_url("https://mixed.example.org/p", hosts(), resolver=resolver)
    with pytest.raises(UrlRefused, match="cloud metadata"):
        check_url("https://meta.example.org/p", hosts(), resolver=resolver)
    with pytest.raises(UrlRefused, match=r"private \(inside"):
        check_url("https://mapped.example.org/p", hosts(), resolver=resolver)


def test_numeric_host_spellings_are_judged_by_what_they_resolve_to():
    """``2130706433`` or ``0x7f.1`` are not IP literals to Python but are to the
    resolver: the resolved address decides."""
    resolver = dns({"2130706433": ["127.0.0.1"], "0x7f.1": ["127.0.0.1"]})
    for url in ("https://2130706433/p", "https://0x7f.1/p"):
        with pytest.raises(UrlRefused, match="loopback"):
            check_url(url, hosts(), resolver=resolver)


def test_a_listed_host_may_be_loopback_and_plain_http_when_the_caller_allows_it():
    listed = hosts("127.0.0.1:8027, localhost")
    target = check_url("http://127.0.0.1:8027/push/abc", listed, allow_http=True)
    assert target.listed and target.origin == "http://127.0.0.1:8027"
    assert target.addresses == ()  # not resolved: anything goes for a listed host
    assert check_url("https://localhost/push/abc", listed).listed
    assert check_url("http://LOCALHOST:9999/p", listed, allow_http=True).port == 9999
    with pytest.raises(UrlRefused, match=r"127.0.0.1:8028 is not"):  # the entry's port only
        check_url("http://127.0.0.1:8028/push/abc", listed, allow_http=True)


def test_plain_http_is_refused_unless_listed_and_allowed():
    listed = hosts("127.0.0.1:8027")
    with pytest.raises(UrlRefused, match="only https URLs"):
        check_url("http://127.0.0.1:8027/push/abc", listed)  # the caller did not allow it
    with pytest.raises(UrlRefused, match=f"plain http is only allowed for hosts listed in "
                                         f"{VAR} \\(push.example.org:80 is not\\)"):
        check_url("http://push.example.org/p", listed, allow_http=True, resolver=PUBLIC)


def test_only_listed_hosts_when_the_caller_takes_no_public_host():
    listed = hosts("*.files.example.org")
    assert check_url("https://cdn.files.example.org/a.pdf", listed, public=False).listed
    with pytest.raises(UrlRefused, match=f"push.example.org:443 is not listed in {VAR}"):
        check_url("https://push.example.org/a.pdf", listed, public=False, resolver=PUBLIC)


@pytest.mark.parametrize(("url", "reason"), [
    ("", "no URL"),
    ("ftp://push.example.org/x", "only https URLs"),
    ("file:///etc/passwd", "only https URLs"),
    ("https://user:pw@push.example.org/x", "user name or password"),
    ("https://push.example.org@127.0.0.1/x", "user name or password"),
    ("https:///nohost", "no host"),
    ("https://push.example.org:99999/x", "not a valid URL"),
    ("https://push example.org/x", "blanks or control characters"),
    ("https://push.example.org/x\r\nHost: evil", "blanks or control characters"),
    ("https://[fe80::1%25eth0]/x", "not a valid host name"),
    ("https://bad_-.-example.org/x", "not a valid host name"),
])
def test_malformed_urls_are_refused_with_the_reason(url, reason):
    with pytest.raises(UrlRefused) as caught:
        check_url(url, hosts("127.0.0.1"), resolver=PUBLIC)
    assert reason in str(caught.value)


def test_a_name_that_does_not_resolve_is_a_temporary_refusal():
    with pytest.raises(UrlRefused) as caught:
        check_url("https://gone.example.org/p", hosts(), resolver=dns({}))
    assert caught.value.temporary
    assert "gone.example.org does not resolve" in caught.value.reason


def test_without_resolving_only_literals_and_localhost_are_judged():
    """The quick check when an endpoint is accepted (push time) does no DNS: names pass,
    loopback literals and localhost do not; the check before sending resolves."""
    def no_dns(host: str, port: int) -> list[str]:
        raise AssertionError("no resolution expected")

    target = check_url("https://push.example.org/p", hosts(), resolve_names=False,
                       resolver=no_dns)
    assert target.addresses == () and not target.listed
    with pytest.raises(UrlRefused, match="loopback"):
        check_url("https://127.0.0.1/p", hosts(), resolve_names=False, resolver=no_dns)
    with pytest.raises(UrlRefused, match="loopback"):
        check_url("https://localhost/p", hosts(), resolve_names=False, resolver=no_dns)


def test_the_real_resolver_judges_localhost_and_literals():
    """The default resolver (``getaddrinfo``) on names that need no network."""
    with pytest.raises(UrlRefused, match="loopback"):
        check_url("https://127.0.0.1:8443/p", hosts())
    assert check_url("https://93.184.215.14/p", hosts()).addresses == ("93.184.215.14",)


def test_peer_check_of_a_made_connection():
    """The address a connection reached is checked again (the name may have resolved
    elsewhere meanwhile); a listed host may connect anywhere."""
    listed = hosts("localhost:8027")
    assert connection_problem(listed, "push.example.org", 443, "93.184.215.14") is None
    assert connection_problem(listed, "push.example.org", 443, "127.0.0.1") == "loopback"
    assert connection_problem(listed, "push.example.org", 443, "fe80::1%eth0") == "link-local"
    assert connection_problem(listed, "push.example.org", 443, "nonsense") == \
        "unknown peer address 'nonsense'"
    assert connection_problem(listed, "localhost", 8027, "127.0.0.1") is None
    assert connection_problem(listed, "localhost", 8028, "127.0.0.1") == "loopback"


def test_origin_keeps_a_non_default_port_and_brackets_ipv6():
    listed = hosts("[::1]:8027, localhost")
    assert check_url("http://[::1]:8027/p", listed, allow_http=True).origin == \
        "http://[::1]:8027"
    assert check_url("https://localhost:443/p", listed).origin == "https://localhost"
