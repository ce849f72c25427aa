"""The scheduler in process, with a fake next hop behind its connection seam
(`Engine(connect=...)`, delivery.engine.Connector): a real queue in tmp_path, a clock the
test moves, no relay process and no socket."""

from __future__ import annotations

import asyncio
import time
from collections import deque

from relaywarden.delivery.client import TransactionResult
from relaywarden.delivery.engine import DeliverySettings, Engine
from relaywarden.delivery.routing import NextHop, Route, RouteKind
from relaywarden.delivery.tls import TlsMode
from relaywarden.logs.maillog import MailEvent, MailLog
from relaywarden.queue.store import (
    Envelope,
    QueueReader,
    RecipientRecord,
    RecipientStatus,
    Store,
    new_queue_id,
)
from relaywarden.smtp.client import Extensions
from relaywarden.smtp.reply import reply

NOW = 1_800_000_000.0
BODY = b"Subject: test\r\n\r\nbody\r\n"
SETTINGS = DeliverySettings(hostname="relay.test", helo="relay.test",
                            postmaster="postmaster@relay.test", retry_schedule=(600, 900))
ROUTE = Route(name='routes."example.org"', kind=RouteKind.DELIVER,
              hops=(NextHop(host="192.0.2.10", port=25, literal=True, mx=False),),
              tls=TlsMode.OPPORTUNISTIC)


class _Router:
    def route(self, domain, *, sender, group, user):
        return ROUTE


class FakeHop:
    """A next hop that answers each transaction with the next reply of ``answers``, for
    every recipient (no PIPELINING, no DSN, no TLS)."""

    def __init__(self, *answers) -> None:
        self.answers = deque(answers)
        self.opened: list[tuple[str, int]] = []
        self.sent: list[tuple[str, list[str], bytes]] = []

    async def connect(self, address, port, policy, *, log=None, queue_id="", route=""):
        self.opened.append((address, port))
        return _Connection(self)


class _Connection:
    extensions = Extensions()
    tls_version = None
    tls_cipher = None

    def __init__(self, hop: FakeHop) -> None:
        self.hop = hop
        self.on_dot = None
        self.closed = False

    @property
    def usable(self) -> bool:
        return not self.closed

    chainable = False

    def trace(self, queue_id, route) -> None:
        pass

    async def send(self, *, sender, recipients, body, size, eightbit=False, smtputf8=False,
                   ret=None, envid=None) -> TransactionResult:
        self.hop.sent.append((sender, [r.address for r in recipients], bytes(body)))
        answer = self.hop.answers.popleft()
        return TransactionResult(recipients=tuple(answer for _ in recipients),
                                 data=answer if answer.positive else None)

    async def close(self) -> None:
        self.closed = True


async def _until(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
    return found


class Relay:
    """An Engine over a queue in ``data_dir``, the fake next hop and a clock at ``now``."""

    def __init__(self, data_dir, hop: FakeHop, settings: DeliverySettings = SETTINGS) -> None:
        self.now = NOW
        self.lines: list[tuple[MailEvent, dict]] = []
        self.store = Store.open(data_dir)
        self.reader = QueueReader(data_dir)
        self.engine = Engine(store=self.store, router=_Router(), resolver=None,
                             settings=settings, mail_log=MailLog(None, observer=self._line),
                             clock=lambda: self.now, connect=hop.connect)

    def _line(self, event: MailEvent, fields: dict) -> None:
        self.lines.append((event, fields))

    async def queue(self, sender: str = "s@example.net") -> str:
        queue_id = new_queue_id()
        spool = self.store.new_spool()
        spool.write(BODY)
        await self.store.commit(Envelope(
            queue_id=queue_id, received_at=self.now, listener="test", client_ip="127.0.0.1",
            client_name=None, helo="client.test", auth_user=None, sender=sender,
            recipients=(RecipientRecord(address="r@example.org",
                                        status=RecipientStatus.QUEUED, rule="test"),)), spool)
        return queue_id

    def recipient(self, queue_id: str) -> dict:
        [r] = self.reader.show(queue_id)["recipients"]
        return r

    def outcomes(self, queue_id: str) -> list[tuple[MailEvent, object]]:
        return [(e, f.get("reply") or f.get("reason")) for e, f in self.lines
                if f.get("id") == queue_id and e in (MailEvent.DEFERRED, MailEvent.DELIVERED,
                                                     MailEvent.BOUNCED, MailEvent.BADMAIL)]

    async def close(self) -> None:
        await self.engine.stop()
        self.reader.close()
        self.store.close()


def test_a_deferral_is_retried_on_the_schedule_and_then_delivered(tmp_path):
    hop = FakeHop(reply(451, "4.3.0", "try later"), reply(250, "2.0.0", "Ok: queued as R1"))

    async def main():
        relay = Relay(tmp_path, hop)
        queue_id = await relay.queue()
        try:
            await relay.engine.start()
            relay.engine.wake()
            # The first attempt: 451, so the recipient waits for the schedule's first delay
            # (600 s, spread by 0.9-1.1; RFC 5321 4.5.4.1).
            first = await _until(lambda: (r := relay.recipient(queue_id))["attempts"] == 1 and r)
            assert (first["status"], first["last_error"], first["remote_mta"]) == (
                "queued", "451 4.3.0 try later", "192.0.2.10 [192.0.2.10]:25")
            assert NOW + 540 <= first["next_attempt"] <= NOW + 660
            # Not due yet: waking the scheduler sends nothing.
            relay.engine.wake()
            await asyncio.sleep(0.2)
            assert len(hop.sent) == 1
            # Past the retry time: the second attempt goes over the idle connection.
            relay.now = NOW + 700
            relay.engine.wake()
            await _until(lambda: relay.reader.count() == 0)    # delivered: the message is gone
        finally:
            await relay.close()
        assert relay.outcomes(queue_id) == [(MailEvent.DEFERRED, "451 4.3.0 try later"),
                                            (MailEvent.DELIVERED, "250 2.0.0 Ok: queued as R1")]

    asyncio.run(main())
    assert hop.sent == [("s@example.net", ["r@example.org"], BODY)] * 2
    assert hop.opened == [("192.0.2.10", 25)]


def test_expiry_bounces_with_a_dsn_that_is_delivered(tmp_path):
    """Deferred past delivery.expire_after: bounced with 4.4.7 (RFC 3463), and the failure
    DSN (RFC 3464), from the null sender, goes out through the same scheduler."""
    hop = FakeHop(reply(451, "4.3.0", "try later"), reply(451, "4.3.0", "still"),
                  reply(250, "2.0.0", "Ok"))

    async def main():
        relay = Relay(tmp_path, hop)
        queue_id = await relay.queue()
        try:
            await relay.engine.start()
            relay.engine.wake()
            await _until(lambda: relay.recipient(queue_id)["attempts"] == 1)
            relay.now = NOW + SETTINGS.expire_after
            relay.engine.wake()
            await _until(lambda: relay.reader.count() == 0)    # bounced, and the DSN sent
        finally:
            await relay.close()
        assert relay.outcomes(queue_id) == [
            (MailEvent.DEFERRED, "451 4.3.0 try later"),
            (MailEvent.BOUNCED, "451 4.4.7 delivery time expired after 2 attempts; last: "
                                "451 4.3.0 still")]

    asyncio.run(main())
    assert [(sender, to) for sender, to, _ in hop.sent] == [
        ("s@example.net", ["r@example.org"])] * 2 + [("", ["s@example.net"])]
    dsn = hop.sent[2][2]
    assert b"multipart/report; report-type=delivery-status" in dsn
    assert b"Action: failed" in dsn and b"Status: 4.4.7" in dsn


def test_a_bounce_of_a_bounce_goes_to_badmail(tmp_path):
    """A DSN (null sender) refused with 5xx has nobody to go back to (RFC 5321 4.5.5): its
    recipient goes to badmail and no further DSN is made."""
    hop = FakeHop(reply(550, "5.1.1", "no such user"))

    async def main():
        relay = Relay(tmp_path, hop)
        queue_id = await relay.queue(sender="")
        try:
            await relay.engine.start()
            relay.engine.wake()
            await _until(lambda: relay.recipient(queue_id)["status"] == "badmail")
            await asyncio.sleep(0.2)
            assert relay.reader.count() == 1            # no DSN of the DSN
            assert relay.recipient(queue_id)["last_error"] == "550 5.1.1 no such user"
        finally:
            await relay.close()
        assert relay.outcomes(queue_id) == [
            (MailEvent.BADMAIL, "double bounce: 550 5.1.1 no such user")]

    asyncio.run(main())
    assert len(hop.sent) == 1
