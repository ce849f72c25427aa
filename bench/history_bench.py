"""Search time over a large message history (issue: < 500 ms over 1,000,000 records).

Builds a history database of N messages (default 1,000,000; 1.5 recipients each, 30 days
of arrivals, 2,000 senders in 50 domains, 50,000 recipients in 500 domains, a few
statuses) through the real History.apply() path in batches, then times each documented
search filter (first page of 50, as the console and `relaywarden track` ask for it) and
a deep page. Prints one line per query: median and worst of the repeats, and rows found.

    python3 bench/history_bench.py [--records 1000000] [--db /tmp/history-bench] [--repeat 5]

The database is kept (pass the same --db to time again without rebuilding).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from relaywarden.history.store import History  # noqa: E402
from relaywarden.queue.journal import JournalEntry  # noqa: E402

DAY = 86400.0


def build(history: History, records: int, seed: int = 7, seq_base: int | None = None) -> None:
    rng = random.Random(seed)
    now = time.time()
    start = now - 30 * DAY
    senders = [f"app{i}@dept{i % 50}.example.com" for i in range(2000)]
    rcpt_domains = [f"customer{i}.example" for i in range(500)]
    seq = history.cursor() if seq_base is None else seq_base
    batch: list[JournalEntry] = []
    t0 = time.monotonic()
    for n in range(records):
        at = start + (n / records) * 30 * DAY
        qid = f"Q{n:09d}"
        rcpts = [f"user{rng.randrange(100)}@{rng.choice(rcpt_domains)}"
                 for _ in range(1 if rng.random() < 0.5 else 2)]
        seq += 1
        batch.append(JournalEntry(seq, at, qid, "received", {
            "listener": "outbound", "client_ip": f"10.0.{rng.randrange(8)}.{rng.randrange(250)}",
            "helo": "scanner", "sender": rng.choice(senders), "size": rng.randrange(500, 90000),
            "subject": f"Scan {n}", "message_id": f"<{n}.{rng.randrange(10**9)}@scanner.example>",
            "recipients": [[a, "queued", "relay.networks[0]", ""] for a in rcpts]}))
        roll = rng.random()
        outcome = ("delivered" if roll < 0.93 else "deferred" if roll < 0.97 else
                   "bounced" if roll < 0.995 else "held")
        for idx, a in enumerate(rcpts):
            seq += 1
            batch.append(JournalEntry(seq, at + 1, qid, "attempt", {
                "idx": idx, "to": a, "outcome": outcome,
                "remote": "mx.customer.example [192.0.2.10]:25",
                "reply": "250 2.0.0 Ok: queued as 4ABC" if outcome == "delivered" else
                "451 4.7.1 try later"}))
        if len(batch) >= 20000:
            history.apply(batch)
            batch.clear()
            done = n + 1
            rate = done / (time.monotonic() - t0)
            print(f"\r  built {done:,} / {records:,} ({rate:,.0f} msgs/s)", end="", flush=True)
    if batch:
        history.apply(batch)
    print()


def timed(fn, repeat: int) -> tuple[float, float, int]:
    times = []
    found = 0
    for _ in range(repeat):
        t = time.perf_counter()
        items, _ = fn()
        times.append((time.perf_counter() - t) * 1000)
        found = len(items)
    return statistics.median(times), max(times), found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--db", type=Path, default=Path("/tmp/relaywarden-history-bench"))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    args.db.mkdir(parents=True, exist_ok=True)
    history = History.open(args.db)
    have = history.count()
    if have < args.records:
        print(f"building {args.records - have:,} history records in {args.db} ...")
        t = time.monotonic()
        build(history, args.records - have, seed=have)
        print(f"  built in {time.monotonic() - t:.0f} s")
    total = history.count()
    # A message in the middle, for exact lookups.
    probe = history.search(limit=1, until=time.time() - 15 * DAY)[0][0]
    probe = history.timeline(probe["queue_id"])
    address = probe["recipients"][0]["address"]
    now = time.time()
    queries = {
        "newest page (no filter)": {},
        "queue id": {"queue_id": probe["queue_id"]},
        "Message-ID": {"message_id": probe["message_id"]},
        "recipient address": {"recipient": address},
        "recipient domain": {"recipient": address.split("@")[1]},
        "sender address": {"sender": probe["sender"]},
        "sender domain": {"sender": probe["sender"].split("@")[1]},
        "client address": {"client": probe["client_ip"]},
        "status bounced": {"status": "bounced"},
        "status held": {"status": "held"},
        "last 2 hours": {"since": now - 7200},
        "recipient domain, one day 15 days ago": {
            "recipient": address.split("@")[1], "since": now - 16 * DAY, "until": now - 15 * DAY},
        "sender domain + status deferred": {"sender": probe["sender"].split("@")[1],
                                            "status": "deferred"},
        "recipient address, nothing there": {"recipient": "nobody@nowhere.example"},
    }
    print(f"history: {total:,} messages in {args.db / 'history.sqlite3'}; "
          f"first page of 50, {args.repeat} runs each")
    worst = 0.0
    for name, kw in queries.items():
        med, top, found = timed(lambda kw=kw: history.search(limit=50, **kw), args.repeat)
        worst = max(worst, top)
        print(f"  {name:<42} median {med:7.1f} ms  max {top:7.1f} ms  ({found} found)")
    # A deep page: the 20th page of a recipient domain search.
    cursor = None
    domain = address.split("@")[1]
    for _ in range(19):
        _, cursor = history.search(recipient=domain, limit=50, before=cursor)
    med, top, found = timed(lambda: history.search(recipient=domain, limit=50, before=cursor),
                            args.repeat)
    worst = max(worst, top)
    print(f"  {'recipient domain, page 20':<42} median {med:7.1f} ms  max {top:7.1f} ms  ({found} found)")
    med, top, _ = timed(lambda: ([history.timeline(probe["queue_id"])], None), args.repeat)
    print(f"  {'timeline of one message':<42} median {med:7.1f} ms  max {top:7.1f} ms")
    print(f"worst search: {worst:.1f} ms (target < 500 ms)")
    return 0 if worst < 500 else 1


if __name__ == "__main__":
    sys.exit(main())
