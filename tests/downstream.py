"""A real downstream SMTP server for the delivery tests: aiosmtpd on 127.0.0.1, in a thread.

It records every message it accepts and can be told, per recipient or for everything, to
answer 4xx or 5xx, to greet with 421, or to be down (not listening at all).
"""

from __future__ import annotations

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


@dataclass
class Behaviour:
    rcpt: dict[str, str] = field(default_factory=dict)   # address -> "450 4.2.0 busy" etc.
    data: str | None = None                              # reply to DATA instead of 250
    greeting: str | None = None                          # e.g. "421 4.3.2 maintenance"


class _Handler:
    def __init__(self, server: "Downstream") -> None:
        self.server = server

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        answer = self.server.behaviour.rcpt.get(address.lower())
        if answer:
            return answer
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.append(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.server.behaviour.data:
            return self.server.behaviour.data
        content = envelope.original_content or envelope.content
        with self.server.lock:
            self.server.messages.append(Received(
                # aiosmtpd reports the null reverse-path as "<>"; the tests speak of it as "".
                sender="" if envelope.mail_from == "<>" else envelope.mail_from, recipients=list(envelope.rcpt_tos),
                content=content if isinstance(content, bytes) else content.encode(),
                peer=session.peer[0], options=list(envelope.mail_options),
                rcpt_options=[list(o) for o in envelope.rcpt_options]))
        return "250 2.0.0 accepted"


class _SMTP(AioSMTP):
    async def _handle_client(self):
        greeting = self._downstream.behaviour.greeting
        if greeting:
            await self.push(greeting)
            self.transport.close()
            return
        await super()._handle_client()


class Downstream:
    def __init__(self, port: int, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.behaviour = Behaviour()
        self.messages: list[Received] = []
        self.lock = threading.Lock()
        self._controller: Controller | None = None

    def start(self) -> "Downstream":
        outer = self

        class Bound(_SMTP):
            _downstream = outer

        class _Controller(Controller):
            def factory(self):
                return Bound(self.handler, enable_SMTPUTF8=True, decode_data=False,
                             data_size_limit=60_000_000, hostname="downstream.test")

        self._controller = _Controller(_Handler(self), hostname=self.host, port=self.port)
        self._controller.start()
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
