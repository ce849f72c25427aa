"""CPU of the outbound client alone, per 1,000 messages (issue 15, the outbound step).

    .venv/bin/python bench/outbound_bench.py reused 20000 10   # 10 connections, reused
    .venv/bin/python bench/outbound_bench.py new 5000 10       # a new connection per message

OutboundConnection (uvloop, no protocol log, no engine, no queue) sends 1 KB messages to
Postfix's smtp-sink on 127.0.0.1 (PIPELINING offered); the figure is this process's CPU
time, so the sink's work is not in it. Compare two trees back to back with
PYTHONPATH=<tree>/src. Loopback only; the sink is stopped at the end.
"""

import asyncio
import shutil
import socket
import subprocess
import sys
import time

import uvloop

from relaywarden.delivery.client import ClientPolicy, OutboundConnection, OutRecipient, TlsMode

BODY = ((b"Subject: x\r\n\r\n" + b"x" * 70 + b"\r\n") * 12)[:1024]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

        await worker(n // c)                                    # warm-up
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(n // c) for _ in range(c)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(f"{mode}: {n} messages over {c} connections: CPU {cpu / n * 1000:.3f} s per "
              f"1,000 messages, {n / wall:,.0f} msgs/s")
    finally:
        sink.terminate()
        sink.wait()


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "reused"
    uvloop.run(main(mode, int(sys.argv[2]) if len(sys.argv) > 2 else 20000,
                    int(sys.argv[3]) if len(sys.argv) > 3 else 10))
