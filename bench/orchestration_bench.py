"""What the delivery process's per-message orchestration costs (issue 15): the outbound
client driven two ways against Postfix's smtp-sink on 127.0.0.1, CPU of this process only.

    .venv/bin/python bench/orchestration_bench.py loop 20000 10
    .venv/bin/python bench/orchestration_bench.py tasks 20000 10

``loop``: one coroutine per connection sends its messages one after the other (what "one
loop per next-hop connection" would do, without chaining). ``tasks``: as the engine does,
a task per message waits for a slot of the FIFO gate (delivery/engine.py _Gate), takes an
idle connection and hands it to the next message as soon as its final dot is out, that
message's envelope going out behind the dot (RFC 2920). Same 1 KB message, same
connections (10 by default), PIPELINING offered. Loopback only; the sink is stopped at the
end.
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
        conns = [await OutboundConnection.open("127.0.0.1", port, policy) for _ in range(c)]

        async def send(conn: OutboundConnection) -> None:
            r = await conn.send(sender="a@example.org", recipients=rcpts, body=BODY,
                                size=len(BODY))
            assert r.data is not None and r.data.code == 250, r

        async def by_loop(count: int) -> None:
            async def worker(conn: OutboundConnection, k: int) -> None:
                for _ in range(k):
                    await send(conn)
            await asyncio.gather(*(worker(conn, count // c) for conn in conns))

        async def by_tasks(count: int) -> None:
            gate, idle = _Gate(c), list(conns)
            loop = asyncio.get_running_loop()
            finished = loop.create_future()
            left = [count]

            async def one() -> None:
                await gate.__aenter__()
                holding = [True]

                def release(conn: OutboundConnection) -> None:
                    if holding[0]:
                        holding[0] = False
                        idle.append(conn)
                        gate.release()
                conn = idle.pop()
                conn.on_dot = release
                await send(conn)
                if conn.on_dot is release:
                    conn.on_dot = None
                release(conn)
                left[0] -= 1
                if not left[0]:
                    finished.set_result(None)

            tasks: set[asyncio.Task] = set()
            for _ in range(count):
                task = loop.create_task(one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                if len(tasks) > 200:            # as the scheduler claims: a batch at a time
                    await asyncio.sleep(0)
            await finished

        run = by_loop if mode == "loop" else by_tasks
        await run(n // 4)                                       # warm-up
        cpu, wall = time.process_time(), time.perf_counter()
        await run(n)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(f"{mode}: {n} messages over {c} connections: CPU {cpu / n * 1e6:.1f} us per "
              f"message, {n / wall:,.0f} msgs/s")
        for conn in conns:
            await conn.close()
    finally:
        sink.terminate()
        sink.wait()


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("loop", "tasks"):
        sys.exit(__doc__)
    uvloop.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 20000,
                    int(sys.argv[3]) if len(sys.argv) > 3 else 10))
