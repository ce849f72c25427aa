"""CPU of the outbound client alone, per 1,000 messages (issue 15, the outbound step).

    .venv/bin/python bench/outbound_bench.py reused 20000 10   # 10 connections, reused
    .venv/bin/python bench/outbound_bench.py new 5000 10       # a new connection per message
    .venv/bin/python bench/outbound_bench.py tasks 20000 10    # as the engine drives it

OutboundConnection (uvloop, no protocol log, no engine, no queue) sends 1 KB messages to
Postfix's smtp-sink on 127.0.0.1 (PIPELINING offered); the figure is this process's CPU
time, so the sink's work is not in it. Compare two trees back to back with
PYTHONPATH=<tree>/src. Loopback only; the sink is stopped at the end.

``reused`` is a loop per connection, one message after the other. ``tasks`` drives the same
connections as the delivery engine does: a task per message waits for a slot of the FIFO
gate (delivery/engine.py _Gate), takes an idle connection and hands it to the next message
as soon as its final dot is out, that message's envelope going out behind the dot (RFC
2920). The two side by side are what "one loop per next-hop connection" could save over the
engine's task per message (docs/benchmarks.md, 2026-12-07).
"""

import asyncio
import shutil
import socket
import subprocess
import sys
import time

import uvloop

from relaywarden.delivery.client import ClientPolicy, OutboundConnection, OutRecipient, TlsMode
from relaywarden.delivery.engine import _Gate

BODY = ((b"Subject: x\r\n\r\n" + b"x" * 70 + b"\r\n") * 12)[:1024]
MODES = ("reused", "new", "tasks")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def by_tasks(conns: list[OutboundConnection], count: int, one) -> None:
    """``count`` messages, a task each, over ``conns`` through a FIFO gate, chained."""
    gate, idle = _Gate(len(conns)), list(conns)
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    left = [count]

    async def message() -> None:
        await gate.__aenter__()
        holding = [True]

        def release(conn: OutboundConnection) -> None:
            if holding[0]:
                holding[0] = False
                idle.append(conn)
                gate.release()
        conn = idle.pop()
        conn.on_dot = release
        await one(conn)
        if conn.on_dot is release:
            conn.on_dot = None
        release(conn)
        left[0] -= 1
        if not left[0]:
            finished.set_result(None)

    tasks: set[asyncio.Task] = set()
    for _ in range(count):
        task = loop.create_task(message())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if len(tasks) > 200:            # as the scheduler claims them: a batch at a time
            await asyncio.sleep(0)
    await finished


async def main(mode: str, n: int, c: int) -> None:
    port = free_port()
    sink = subprocess.Popen([shutil.which("smtp-sink") or "/usr/sbin/smtp-sink", "-u", "postfix",
                             "-c", f"127.0.0.1:{port}", "1000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await asyncio.sleep(0.3)
        policy = ClientPolicy(helo="bench.example", tls=TlsMode.NONE)
        rcpts = [OutRecipient(address="b@example.net")]

        async def one(conn: OutboundConnection) -> None:
            r = await conn.send(sender="a@example.org", recipients=rcpts, body=BODY,
                                size=len(BODY))
            assert r.data is not None and r.data.code == 250, r

        async def worker(count: int) -> None:
            if mode == "reused":
                conn = await OutboundConnection.open("127.0.0.1", port, policy)
                for _ in range(count):
                    await one(conn)
                await conn.close()
            else:
                for _ in range(count):
                    conn = await OutboundConnection.open("127.0.0.1", port, policy)
                    await one(conn)
                    await conn.close()

        if mode == "tasks":
            conns = [await OutboundConnection.open("127.0.0.1", port, policy) for _ in range(c)]
            await by_tasks(conns, n // 4, one)                  # warm-up
            cpu, wall = time.process_time(), time.perf_counter()
            await by_tasks(conns, n, one)
        else:
            await worker(n // c)                                # warm-up
            cpu, wall = time.process_time(), time.perf_counter()
            await asyncio.gather(*(worker(n // c) for _ in range(c)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(f"{mode}: {n} messages over {c} connections: CPU {cpu / n * 1000:.3f} s per "
              f"1,000 messages, {n / wall:,.0f} msgs/s")
        if mode == "tasks":
            for conn in conns:
                await conn.close()
    finally:
        sink.terminate()
        sink.wait()


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "reused"
    if mode not in MODES:
        sys.exit(__doc__)
    uvloop.run(main(mode, int(sys.argv[2]) if len(sys.argv) > 2 else 20000,
                    int(sys.argv[3]) if len(sys.argv) > 3 else 10))
