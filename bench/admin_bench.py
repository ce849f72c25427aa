"""Admin console and API answer times with a big queue and a big history
(issue: pages and API answers < 200 ms with 100,000 messages queued and 1M history records).

Seeds a data directory with N queued messages (default 100,000: most held for a hold
route, some quarantined in badmail, some waiting for a retry a day away, so nothing is
delivered while we measure) through the relay's own Store, and a history of M records
(default 1,000,000, built by bench/history_bench.py's builder through History.apply),
starts the real relay with its admin server, logs in over HTTP and times every page and
API call the console makes: median and worst of --repeat calls each.

    python3 bench/admin_bench.py [--queued 100000] [--history 1000000] [--repeat 10]
                                 [--dir /tmp/relaywarden-admin-bench]

The seeded directory is kept and reused by the next run with the same --dir.
Loopback only; it stops everything it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import http.cookiejar
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from relay_bench import free_port, wait_port  # noqa: E402


def seed_queue(data_dir: Path, count: int) -> None:
    from relaywarden.queue.store import (Envelope, RecipientRecord, RecipientStatus, Store,
                                         new_queue_id)

    async def fill() -> None:
        store = Store.open(data_dir)
        body = (b"Subject: seeded\r\nMessage-ID: <seed@bench>\r\n\r\n" + b"x" * 1000 + b"\r\n")
        batch = []
        for i in range(count):
            spool = store.new_spool()
            spool.write(body)
            kind = i % 20
            status = (RecipientStatus.BADMAIL if kind == 0 else
                      RecipientStatus.QUEUED if kind == 1 else RecipientStatus.HELD)
            domain = "later.test" if kind == 1 else f"held{i % 100}.test"
            env = Envelope(queue_id=new_queue_id(), received_at=time.time(), listener="seed",
                           client_ip=f"10.0.{i % 8}.{i % 250}", client_name=None, helo="seed",
                           auth_user=None, sender=f"app{i % 300}@example.com",
                           recipients=(RecipientRecord(address=f"u{i}@{domain}", status=status,
                                                       rule="seed", reason="seeded"),))
            batch.append(store.commit(env, spool))
            if len(batch) == 2000:
                await asyncio.gather(*batch)
                batch = []
                print(f"\r  queued {i + 1:,} / {count:,}", end="", flush=True)
        await asyncio.gather(*batch)
        store.close()
        print()

    asyncio.run(fill())
    db = sqlite3.connect(data_dir / "queue.sqlite3")
    # Waiting ones wait a day: the relay must not spend the run delivering them.
    db.execute("UPDATE recipients SET next_attempt = ?, held_by = CASE status WHEN 'held'"
               " THEN 'admin' ELSE held_by END", (time.time() + 86400,))
    db.commit()
    db.close()


def seed_history(data_dir: Path, count: int) -> None:
    from history_bench import build

    from relaywarden.history.store import History

    history = History.open(data_dir)
    have = history.count()
    if have < count:
        # Sequence numbers far above the queue's journal, and the cursor put back: the
        # relay's indexer then takes in the seeded queue's journal as it would live.
        build(history, count - have, seed=have, seq_base=10**12 + have * 10)
        history._db.execute("UPDATE meta SET value = '0' WHERE key = 'cursor'")
    history.close()


CONFIG = """
[relay]
hostname = "bench.test"
data_dir = "var"
min_free_space = 0

[dns]
nameservers = ["127.0.0.1"]
port = 1

[routes."*"]
next_hops = ["[127.0.0.1]:1"]

[listeners.bench]
address = "127.0.0.1"
port = {smtp}

[listeners.bench.relay]
networks = ["127.0.0.0/8"]

[admin]
enabled = true
address = "127.0.0.1"
port = {admin}
users_file = "admin-users"
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queued", type=int, default=100_000)
    ap.add_argument("--history", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/relaywarden-admin-bench"))
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    data_dir = args.dir / "var"
    marker = args.dir / f"seeded-{args.queued}-{args.history}"
    if not marker.exists():
        for leftover in ("var",):
            subprocess.run(["rm", "-rf", str(args.dir / leftover)], check=True)
        data_dir.mkdir(parents=True)
        print(f"seeding {args.queued:,} queued messages ...")
        seed_queue(data_dir, args.queued)
        print(f"seeding {args.history:,} history records ...")
        seed_history(data_dir, args.history)
        marker.touch()
    smtp, admin = free_port(), free_port()
    config = args.dir / "relay.toml"
    config.write_text(CONFIG.format(smtp=smtp, admin=admin))
    users = args.dir / "admin-users"
    if users.exists():
        users.unlink()
    subprocess.run([sys.executable, "-m", "relaywarden", "admin-user", "add", "bench", "--role",
                    "admin", "--config", str(config), "--password-stdin"],
                   input=b"bench-password\n", check=True, stdout=subprocess.DEVNULL)
    proc = subprocess.Popen([sys.executable, "-m", "relaywarden", "serve", "--config",
                             str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(smtp)
        wait_port(admin)
        base = f"http://127.0.0.1:{admin}"
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        opener.open(urllib.request.Request(
            f"{base}/api/v1/session", method="POST",
            data=json.dumps({"username": "bench", "password": "bench-password"}).encode(),
            headers={"Content-Type": "application/json"}), timeout=30).read()

        def get(path: str) -> bytes:
            with opener.open(f"{base}{path}", timeout=60) as r:
                return r.read()

        # Let the indexer take in the seeded queue's journal first (it lags by design).
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            q = sqlite3.connect(f"file:{data_dir / 'queue.sqlite3'}?mode=ro", uri=True)
            (left,) = q.execute("SELECT COUNT(*) FROM journal").fetchone()
            q.close()
            if left == 0:
                break
            time.sleep(1)
        first = json.loads(get("/api/v1/queue?limit=50"))["items"][0]["id"]
        history = json.loads(get("/api/v1/history?limit=50"))["items"]
        some = history[len(history) // 2]
        rcpt = some["recipients"][0]["address"]
        paths = {
            "console page /": "/",
            "console script": "/app.js",
            "queue, first page": "/api/v1/queue?limit=50",
            "queue, status held": "/api/v1/queue?status=held&limit=50",
            "queue, status queued (5%)": "/api/v1/queue?status=queued&limit=50",
            "queue, a status none has": "/api/v1/queue?status=delivered&limit=50",
            "queue, one domain": "/api/v1/queue?domain=held42.test&limit=50",
            "queue, one sender": "/api/v1/queue?sender=app7@example.com&limit=50",
            "queue, recipient": f"/api/v1/queue?recipient=u{args.queued // 2}@held{(args.queued // 2) % 100}.test",
            "queue, one message": f"/api/v1/queue/{first}",
            "badmail, first page": "/api/v1/badmail?limit=50",
            "history, newest page": "/api/v1/history?limit=50",
            "history, recipient": f"/api/v1/history?recipient={rcpt}",
            "history, recipient domain": f"/api/v1/history?recipient={rcpt.split('@')[1]}",
            "history, timeline": f"/api/v1/history/{some['queue_id']}",
            "status": "/api/v1/status",
            "stats, last hour": "/api/v1/stats?window=hour",
            "stats, last day": "/api/v1/stats?window=day",
            "config": "/api/v1/config",
            "metrics": "/metrics",
        }
        print(f"{args.queued:,} messages queued, history of "
              f"{json.loads(get('/api/v1/status')).get('queue', {})}; {args.repeat} calls each")
        worst = 0.0
        for name, path in paths.items():
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                try:
                    get(path)
                except urllib.error.HTTPError as exc:
                    print(f"  {name}: HTTP {exc.code} {exc.read()[:200]!r}")
                    return 1
                times.append((time.perf_counter() - t) * 1000)
            worst = max(worst, max(times))
            print(f"  {name:<28} median {statistics.median(times):7.1f} ms  max {max(times):7.1f} ms")
        print(f"worst answer: {worst:.1f} ms (target < 200 ms)")
        return 0 if worst < 200 else 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
