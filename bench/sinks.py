"""A null SMTP server: speaks enough SMTP for smtplib, checks line length, discards mail.
Optionally a *slow* one: each message's final ``250`` comes ``latency`` seconds after
its data (every connection waits on its own, as with a real relay).

The project's sink (:mod:`mc_local.smtp_sink`, aiosmtpd writing ``.eml`` files)
accepts about a thousand messages a second on this machine: right for the demo and for
the render + deliver figure, far too slow to drain a million-event backlog in minutes.
This one is a bare asyncio protocol (one event loop, no parsing beyond the SMTP verbs),
so the processing, not the sink, bounds a drain. Like a real server it refuses lines
longer than RFC 5321's 1,000 characters (``500``), so a message with bare LF line ends
still fails here as it would in production.

    python -m bench.sinks --port 8026
    python -m bench.sinks --port 8026 --latency 0.05     # a relay taking 50 ms per message

The latency can be changed while it runs, from any connection, with the bench-only
command ``XDLY <milliseconds>`` (answered ``250``): the Airflow deployment keeps its
``smtp_default`` and the bench switches between a zero-latency and a slow relay.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

MAX_LINE = 1000  # RFC 5321 4.5.3.1.6, CRLF included


class NullSmtp(asyncio.Protocol):
    accepted = 0
    refused = 0
    latency = 0.0  # seconds before each message's final 250

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""
        self.in_data = False
        self.transport.write(b"220 bench null SMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    return
                body, self.buffer = self.buffer[:end], self.buffer[end + 5:]
                self.in_data = False
                if any(len(line) > MAX_LINE - 2 for line in body.split(b"\r\n")):
                    NullSmtp.refused += 1
                    self.transport.write(b"500 Line too long (see RFC5321 4.5.3.1.6)\r\n")
                else:
                    NullSmtp.accepted += 1
                    self.reply(b"250 OK queued\r\n", NullSmtp.latency)
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            line, self.buffer = self.buffer[:end], self.buffer[end + 2:]
            self.command(line[:4].upper(), line[5:])

    def reply(self, answer: bytes, delay: float = 0.0) -> None:
        if delay <= 0:
            self.transport.write(answer)
            return

        def later() -> None:
            if not self.transport.is_closing():
                self.transport.write(answer)

        asyncio.get_running_loop().call_later(delay, later)

    def command(self, verb: bytes, argument: bytes = b"") -> None:
        if verb == b"XDLY":
            try:
                NullSmtp.latency = max(0.0, float(argument.strip() or 0) / 1000)
            except ValueError:
                self.transport.write(b"501 XDLY takes milliseconds\r\n")
                return
            self.transport.write(b"250 latency set\r\n")
        elif verb == b"EHLO":
            self.transport.write(b"250-bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
        elif verb == b"DATA":
            self.in_data = True
            self.transport.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        elif verb == b"QUIT":
            self.transport.write(b"221 Bye\r\n")
            self.transport.close()
        elif verb in (b"HELO", b"MAIL", b"RCPT", b"RSET", b"NOOP"):
            self.transport.write(b"250 OK\r\n")
        else:
            self.transport.write(b"502 Command not implemented\r\n")


def set_latency(port: int, seconds: float, host: str = "127.0.0.1") -> None:
    """Change a running sink's latency (the ``XDLY`` command)."""
    import smtplib

    with smtplib.SMTP(host, port, timeout=10) as smtp:
        code, reply = smtp.docmd("XDLY", str(round(seconds * 1000)))
        if code != 250:
            raise RuntimeError(f"the sink on port {port} refused XDLY: {code} {reply!r}")


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(NullSmtp, host, port, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"null SMTP sink on {host}:{port}", flush=True)
    async with server:
        await stop.wait()
    print(f"accepted {NullSmtp.accepted}, refused {NullSmtp.refused}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds before each message's final 250 (default 0)")
    args = parser.parse_args(argv)
    NullSmtp.latency = max(0.0, args.latency)
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
