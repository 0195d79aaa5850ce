"""Test factory for tracking: a tracked e-mail template (opens, clicks, mirror page,
unsubscribe category) and readers of the tracked message a sink received."""

from __future__ import annotations

import re
from dataclasses import replace

from processing_factory import ORDER_TEMPLATE

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120"
TRACKED = replace(
    ORDER_TEMPLATE, internal_name="trackedOrder",
    html_body=('<html><head><title>Order</title></head><body>'
               '<p>Hello {{ firstName }}, order <b>{{ orderId }}</b> is confirmed.</p>'
               '<p><a href="https://shop.example/orders/{{ orderId }}?a=1&amp;b=2">Your order</a>'
               ' <a href="mailto:help@shop.example">Help</a>'
               ' <a data-mc-notrack href="https://shop.example/private">Private</a>'
               ' <a href="{{ mirror_url }}">View in your browser</a>'
               ' <a href="{{ unsubscribe_url }}">Unsubscribe</a></p></body></html>'),
    text_body="Hello {{ firstName }}, order {{ orderId }}. Online: {{ mirror_url }}",
    options={"tracking": {"opens": True, "clicks": True}, "mirror_page": True,
             "unsubscribe": {"category": "orders"}})


def hrefs(html: str) -> list[str]:
    """The links of a rendered HTML part, in order (``&amp;`` decoded)."""
    return [h.replace("&amp;", "&") for h in re.findall(r'href="([^"]*)"', html)]


def pixel(html: str) -> str:
    return re.search(r'<img src="([^"]+)"', html).group(1)


def parts(message) -> tuple[str, str]:
    """(html, text) of a message read from the SMTP sink."""
    return (message.get_body(("html",)).get_content(),
            message.get_body(("plain",)).get_content())
