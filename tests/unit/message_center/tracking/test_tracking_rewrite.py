"""Tokens, template options and the rewriting of a rendered e-mail (no servers)."""

from __future__ import annotations

import pytest

from message_center.tracking import links, options, tokens

KEY, OLD = "new-key-0123456789abcdef", "old-key-0123456789abcdef"


def test_tokens_are_signed_typed_and_rotatable():
    old = tokens.Signer([OLD])
    rotated = tokens.Signer([KEY, OLD])
    token = old.sign(tokens.CLICK, 42, 3, "https://a.example/")
    claim = rotated.verify(token, tokens.CLICK)  # the old key still verifies
    assert (claim.log_id, claim.link) == (42, 3) and claim.matches_url("https://a.example/")
    assert not claim.matches_url("https://evil.example/")
    assert rotated.verify(token, tokens.OPEN) is None  # another kind
    assert tokens.Signer([KEY]).verify(token, tokens.CLICK) is None  # key retired
    assert rotated.verify(rotated.sign(tokens.OPEN, 7), tokens.OPEN).log_id == 7
    assert old.verify(rotated.sign(tokens.OPEN, 7), tokens.OPEN) is None  # new key signs
    def flip(text, i):
        return text[:i] + ("B" if text[i] == "A" else "A") + text[i + 1:]

    for bad in ("", "x", token[:-1], token + "A", flip(token, 5), flip(token, -1), "!" * 40):
        assert rotated.verify(bad, tokens.CLICK) is None
    with pytest.raises(tokens.TrackingKeyError):
        tokens.Signer([])
    with pytest.raises(tokens.TrackingKeyError):
        tokens.Signer(["short"])


def test_options_are_checked():
    parsed, problems = options.parse({"tracking": {"opens": True, "clicks": "yes", "x": 1},
                                      "mirror_page": 1, "unsubscribe": {"category": "a b"}})
    assert [field for field, _ in problems] == [
        "tracking.clicks", "tracking.x", "mirror_page", "unsubscribe.category"]
    parsed, problems = options.parse({"tracking": {"opens": True}, "mirror_page": True,
                                      "unsubscribe": {"category": "news"}})
    assert not problems
    assert options.from_content(parsed.as_content()) == parsed
    assert options.parse({})[0].as_content() == {}  # no keys: content hashes unchanged


CONFIG = tokens.TrackingConfig("https://t.example", tokens.Signer([KEY]))
ALL = options.TrackingOptions(opens=True, clicks=True, mirror_page=True,
                              unsubscribe_category="news")


def test_links_are_rewritten_except_those_left_alone():
    html = ('<html><body><a href="https://a.example/x?a=1&amp;b=2">A</a>'
            '<a class="c" href=\'http://b.example\'>B</a>'
            '<a href="mailto:x@y.example">M</a><a href="tel:+331">T</a><a href="#top">#</a>'
            '<a data-mc-notrack href="https://secret.example">S</a>'
            '<a href="https://t.example/m/abc">mirror</a></body></html>')
    found = links.tracked_links(html, CONFIG.base_url)
    assert [(link.number, link.url) for link in found] == [
        (0, "https://a.example/x?a=1&b=2"), (1, "http://b.example")]
    out = links.track_html(html, ALL, CONFIG, 9)
    assert out.count('href="https://t.example/c/') == 2
    for kept in ('href="mailto:x@y.example"', 'href="tel:+331"', 'href="#top"',
                 'href="https://secret.example"', 'href="https://t.example/m/abc"'):
        assert kept in out
    assert out.index('<img src="https://t.example/o/') < out.index("</body>")
    first = out.split('href="https://t.example/c/')[1].split('"')[0]
    claim = CONFIG.signer.verify(first, tokens.CLICK)
    assert claim.log_id == 9 and claim.link == 0
    assert claim.matches_url("https://a.example/x?a=1&b=2")
    assert links.track_html(html, options.TrackingOptions(), CONFIG, 9) == html


def test_unsubscribe_headers_and_variables():
    assert links.headers(options.TrackingOptions(opens=True), CONFIG, 1) == {}
    headers = links.headers(ALL, CONFIG, 1)
    assert headers["List-Unsubscribe"].startswith("<https://t.example/u/")
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert set(links.variables(ALL, CONFIG, 1)) == {"mirror_url", "unsubscribe_url"}
