"""A real downstream SMTP server for the delivery tests: aiosmtpd on 127.0.0.1, in a thread.

It records every message it accepts and can be told, per recipient or for everything, to
answer 4xx or 5xx, to greet with 421, to answer the final dot late, or to be down (not
listening at all). It can offer STARTTLS (tls_context), speak TLS from the first byte
(ssl_context, RFC 8314 implicit TLS) and require AUTH (authenticator), and it counts its
connections (connections, max_open), so that tests can see connection reuse.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AioSMTP


@dataclass
class Received:
    sender: str
    recipients: list[str]
    content: bytes
    peer: str
    options: list[str]
    rcpt_options: list[list[str]]
    tls: str | None = None          # TLS version of the session ("TLSv1.3"), None: plaintext
    login: str | None = None        # the AUTH user the session authenticated as
    connection: int = 0             # which connection (1, 2, ...) carried the message
    helo: str | None = None         # the name the client gave in EHLO/HELO


@dataclass
class Behaviour:
    rcpt: dict[str, str] = field(default_factory=dict)   # address -> "450 4.2.0 busy" etc.
    data: str | None = None                              # reply to DATA instead of 250
    greeting: str | None = None                          # e.g. "421 4.3.2 maintenance"
    mail_once: str | None = None                         # reply to the next MAIL, once
    # Seconds to wait before answering the final dot. A message whose client hung up
    # meanwhile is not recorded: the server could not say 250, so it never took it.
    data_delay: float = 0.0


class _Handler:
    def __init__(self, server: "Downstream") -> None:
        self.server = server

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        answer, self.server.behaviour.mail_once = self.server.behaviour.mail_once, None
        if answer:
            return answer
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.server.lock:
            self.server.rcpts_seen.append(address.lower())
        answer = self.server.behaviour.rcpt.get(address.lower())
        if answer:
            return answer
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.append(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        delay = self.server.behaviour.data_delay
        if delay:
            with self.server.lock:
                self.server.delayed += 1
            await asyncio.sleep(delay)
            with self.server.lock:
                self.server.delayed_done += 1
            if server.transport is None or server.transport.is_closing():
                return "451 4.4.2 client went away"
        if self.server.behaviour.data:
            return self.server.behaviour.data
        content = envelope.original_content or envelope.content
        ssl_object = server.transport.get_extra_info("ssl_object") if server.transport else None
        login = getattr(session.auth_data, "login", None) if session.authenticated else None
        with self.server.lock:
            self.server.messages.append(Received(
                # aiosmtpd reports the null reverse-path as "<>"; the tests speak of it as "".
                sender="" if envelope.mail_from == "<>" else envelope.mail_from, recipients=list(envelope.rcpt_tos),
                content=content if isinstance(content, bytes) else content.encode(),
                peer=session.peer[0], options=list(envelope.mail_options),
                rcpt_options=[list(o) for o in envelope.rcpt_options],
                tls=ssl_object.version() if ssl_object is not None else None,
                login=login.decode() if isinstance(login, bytes) else login,
                connection=server._connection_no, helo=session.host_name))
        return "250 2.0.0 accepted"


class _SMTP(AioSMTP):
    _connection_no = 0

    async def _handle_client(self):
        # Once per connection (connection_made runs again after STARTTLS; this does not).
        down = self._downstream
        counted = down._counting
        if counted:
            with down.lock:
                down.connections += 1
                down.open_now += 1
                down.max_open = max(down.max_open, down.open_now)
                self._connection_no = down.connections
        try:
            greeting = down.behaviour.greeting
            if greeting:
                await self.push(greeting)
                self.transport.close()
                return
            await super()._handle_client()
        finally:
            if counted:
                with down.lock:
                    down.open_now -= 1


class Downstream:
    def __init__(self, port: int, *, host: str = "127.0.0.1",
                 tls_context: ssl.SSLContext | None = None, require_starttls: bool = False,
                 ssl_context: ssl.SSLContext | None = None, authenticator=None,
                 size_limit: int = 60_000_000, smtp_class: type | None = None) -> None:
        """tls_context: offer STARTTLS with it; ssl_context: TLS from the first byte;
        authenticator: aiosmtpd's AUTH callback (AUTH is then offered, after TLS only);
        smtp_class: a subclass of _SMTP with more (say auth_XOAUTH2 methods)."""
        self.host = host
        self.port = port
        self.behaviour = Behaviour()
        self.messages: list[Received] = []
        self.rcpts_seen: list[str] = []     # every RCPT TO address, callaheads included
        self.lock = threading.Lock()
        self.connections = 0        # connections the relay opened (not the start-up probe)
        self.open_now = 0
        self.max_open = 0           # most connections open at the same time
        self.delayed = 0            # final-dot answers held back by behaviour.data_delay
        self.delayed_done = 0       # ... and answered since (250, or 451 to a client gone)
        self._counting = False
        self._tls_context = tls_context
        self._require_starttls = require_starttls
        self._ssl_context = ssl_context
        self._authenticator = authenticator
        self._size_limit = size_limit   # advertised as SIZE (RFC 1870)
        self._smtp_class = smtp_class or _SMTP
        self._controller: Controller | None = None

    def start(self) -> "Downstream":
        outer = self

        class Bound(self._smtp_class):
            _downstream = outer

        class _Controller(Controller):
            def factory(self):
                return Bound(self.handler, enable_SMTPUTF8=True, decode_data=False,
                             data_size_limit=outer._size_limit, hostname="downstream.test",
                             tls_context=outer._tls_context,
                             require_starttls=outer._require_starttls,
                             authenticator=outer._authenticator)

        self._counting = False
        self._controller = _Controller(_Handler(self), hostname=self.host, port=self.port,
                                       ssl_context=self._ssl_context)
        # start() connects once itself to make sure the server runs: not counted.
        self._controller.start()
        self._counting = True
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.05)
        with self.lock:
            raise AssertionError(f"{len(self.messages)} message(s) arrived, expected {count}")

    def delivered_to(self) -> list[str]:
        with self.lock:
            return [r for m in self.messages for r in m.recipients]
