"""CPU of the delivery engine around the outbound client, per 1,000 messages (issue 15).

    .venv/bin/python bench/engine_bench.py 20000            # engine + client, logs off
    .venv/bin/python bench/engine_bench.py 20000 --logs     # with the mail and protocol logs
    .venv/bin/python bench/engine_bench.py 20000 --rounds 3 # alternate both, three times

The delivery engine (delivery/engine.py: its scheduler, a task per message, the FIFO gate,
the connection pool and chaining, the plan of outcomes, the mail log's lines) drives the
outbound client to Postfix's smtp-sink on 127.0.0.1, with messages of 1 KB handed to it
from memory as the hand-off does. The queue is a stand-in kept in this process (claims
from a counter, outcomes counted and dropped): no hand-off log read back, no journal rows,
no markers, no metrics. The figure is this process's CPU, so the sink's work is not in it.

Beside `bench/outbound_bench.py` (the client alone) and `bench/profile_relay.py --perf` (the
whole delivery process), it splits the delivery process's CPU into the client, the engine
and logs around it, and what is left (the queue's work in the delivery process, the
metrics, its share of the relay's load). Compare two trees back to back with
PYTHONPATH=<tree>/src. Loopback only; the sink is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from relaywarden.delivery.engine import DeliverySettings, Engine
from relaywarden.delivery.routing import NextHop, Route, RouteKind
from relaywarden.delivery.tls import TlsMode
from relaywarden.logs.files import RotatingFile, Rotation
from relaywarden.logs.maillog import MailLog
from relaywarden.logs.protocol import W3C_OUTBOUND_HEADER, ProtocolLog
from relaywarden.queue.store import DueMessage, DueRecipient

BODY = ((b"Subject: x\r\nMessage-ID: <bench@example.com>\r\n\r\n" + b"x" * 70 + b"\r\n")
        * 13)[:1024]
CLAIM = 256          # messages a claim hands out at most (the engine asks for its free slots)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MemoryQueue:
    """The queue as the engine sees it, in memory: ``count`` messages due at once, each
    outcome counted. Not the product's queue (see the module's docstring)."""

    hands_off = False
    on_index_scan = None

    def __init__(self, count: int) -> None:
        self.left = count
        self.count = count
        self.recorded = 0
        self.outcomes: dict[str, int] = {}
        self.finished = asyncio.get_running_loop().create_future()
        self._seq = 0

    async def release_leases(self) -> None:
        pass

    async def renew_leases(self, keys, until) -> None:
        pass

    async def index_waiting(self, before):
        return []

    async def index_handed(self, queue_ids, lease_until=0.0):
        return []

    async def claim_due(self, now: float, limit: int, lease: float) -> list[DueMessage]:
        out = []
        while self.left and len(out) < min(limit, CLAIM):
            self.left -= 1
            self._seq += 1
            out.append(DueMessage(
                queue_id=f"B{self._seq:09d}", received_at=time.time(), sender="a@example.com",
                client_group=None, auth_user=None, ret=None, envid=None, body_type=None,
                smtputf8=False, size=len(BODY), body=BODY, handed=True,
                recipients=(DueRecipient(idx=0, address="b@example.net", domain="example.net",
                                         orcpt=None, notify=None, attempts=0,
                                         delay_notified=False),)))
        return out

    async def record(self, queue_id, updates, *, new_messages=(), events=()) -> None:
        for update in updates:
            status = update.status.value
            self.outcomes[status] = self.outcomes.get(status, 0) + 1
        self.recorded += 1
        if self.recorded == self.count and not self.finished.done():
            self.finished.set_result(None)


async def one_run(port: int, count: int, logs: bool) -> float:
    """CPU seconds of this process per 1,000 messages, all of them delivered."""
    route = Route(name="bench", kind=RouteKind.DELIVER, tls=TlsMode.OPPORTUNISTIC,
                  hops=(NextHop(host="127.0.0.1", port=port, literal=True, mx=False),))

    class Router:
        def route(self, domain, *, sender, group, user):
            return route

    directory = Path(tempfile.mkdtemp(prefix="engine-bench-"))
    protocol_log = None
    if logs:
        def series(prefix: str, suffix: str, header: str = "") -> RotatingFile:
            return RotatingFile(directory, prefix=prefix, suffix=suffix,
                                rotation=Rotation.DAILY, max_size=0, keep=3, header=header)
        mail_log = MailLog(series("mail", ".log"))
        protocol_log = ProtocolLog(w3c=series("out", ".log", W3C_OUTBOUND_HEADER),
                                   jsonl=series("out", ".jsonl"))
    else:
        mail_log = MailLog(None)
    queue = MemoryQueue(count)
    engine = Engine(store=queue, router=Router(), resolver=None,  # type: ignore[arg-type]
                    settings=DeliverySettings(hostname="bench.test", helo="bench.test",
                                              postmaster="postmaster@bench.test"),
                    mail_log=mail_log, protocol_log=protocol_log)
    before = resource.getrusage(resource.RUSAGE_SELF)
    await engine.start()
    await asyncio.wait_for(queue.finished, 300)
    after = resource.getrusage(resource.RUSAGE_SELF)
    await engine.stop()
    mail_log.close()
    if protocol_log is not None:
        protocol_log.close()
    shutil.rmtree(directory, ignore_errors=True)
    if queue.outcomes != {"delivered": count}:
        sys.exit(f"not every message was delivered: {queue.outcomes}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu * 1000 / count


async def main(count: int, rounds: int, modes: list[bool]) -> None:
    sink_tool = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    port = free_port()
    sink = subprocess.Popen([sink_tool, "-u", "postfix", f"127.0.0.1:{port}", "256"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        results: dict[bool, list[float]] = {mode: [] for mode in modes}
        for _ in range(rounds):
            for mode in modes:
                results[mode].append(await one_run(port, count, mode))
        for mode, figures in results.items():
            shown = " / ".join(f"{f:.3f}" for f in figures)
            print(f"engine + client{' + logs' if mode else ''}: {count} messages: CPU "
                  f"{statistics.median(figures):.3f} s per 1,000 messages (median; {shown})")
    finally:
        sink.terminate()
        sink.wait(timeout=10)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("count", type=int, nargs="?", default=20000)
    ap.add_argument("--logs", action="store_true", help="the mail and protocol logs on")
    ap.add_argument("--rounds", type=int, default=0,
                    help="alternate logs off and on this many times")
    args = ap.parse_args()
    modes = [False, True] if args.rounds else [args.logs]
    uvloop.run(main(args.count, max(args.rounds, 1), modes))
