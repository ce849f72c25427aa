"""Instructions per log line, for each of the relay's log formatters (issue 15).

    .venv/bin/python bench/log_line_cost.py                  # W3C, JSON, mail log
    .venv/bin/python bench/log_line_cost.py --lines 2000     # larger batches

Each formatter (the protocol log's W3C and JSON lines, the mail log's lines) formats a
batch of the lines a relayed message makes, as the relay's flush does: four protocol lines
per message (MAIL, RCPT, DATA, the final dot), and a ``queued`` and a ``delivered`` line
in the mail log. The count is machine instructions under valgrind's callgrind, which do
not drift with the machine's hour as CPU time does: this script runs itself under
callgrind twice, with N and 3N messages, and divides the difference by the 2N messages'
lines, so Python's start-up and the batch's set-up cancel out. A change to a formatter is
then visible to ~1% (docs/benchmarks.md, "Where the instructions go, line by line").

Compare two trees back to back with PYTHONPATH=<tree>/src. Needs valgrind.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time

#: Lines per relayed message, by formatter (see the module's docstring).
LINES_PER_MESSAGE = {"w3c": 4, "json": 4, "mail": 2}


def batches(messages: int) -> tuple[list[tuple], list[tuple]]:
    """The protocol log's recorded lines and the mail log's recorded events of
    ``messages`` relayed messages, in the tuples the logs keep before their flush."""
    from relaywarden.logs.maillog import MailEvent
    from relaywarden.logs.protocol import ProtocolLog

    log = ProtocolLog(w3c=None, jsonl=None)
    session = log.session(client_ip="127.0.0.1", site="default", server_name="relay.example",
                          server_ip="127.0.0.1", server_port=25)
    now = 1_796_674_673.0
    protocol: list[tuple] = []
    mail: list[tuple] = []
    for i in range(messages):
        now += 0.000317
        qid = f"318DG9BV6BV1C{i:06d}"
        protocol += [
            (now, session, None, "MAIL", "FROM:<scanner@example.com> SIZE=1024", 250, 30, 38,
             0, qid),
            (now, session, None, "RCPT", "TO:<user@example.org>", 250, 30, 25, 0, qid),
            (now, session, None, "DATA", "", 354, 37, 6, 0, qid),
            (now, session, None, ".", "", 250, 44, 1100, 1, qid)]
        mail += [
            (now, MailEvent.QUEUED, {
                "id": qid, "listener": "default", "client": "127.0.0.1", "helo": "scanner",
                "user": None, "sender": "scanner@example.com", "to": "user@example.org",
                "size": 1100, "stripped": None}, now - 0.001),
            (now, MailEvent.DELIVERED, {
                "id": qid, "to": "user@example.org", "relay": "127.0.0.1:2526",
                "route": "default", "tls": "none", "reply": f"250 2.0.0 Ok: queued as A{i}",
                "ms": 12}, None)]
    return protocol, mail


def format_once(which: str, messages: int) -> None:
    """Inside callgrind: build the batch, then format it with ``which`` (or nothing)."""
    from relaywarden.logs.maillog import MailLog
    from relaywarden.logs.protocol import ProtocolLog, _json_lines

    protocol, mail = batches(messages)
    if which == "w3c":
        ProtocolLog(w3c=None, jsonl=None)._w3c_lines(protocol)
    elif which == "json":
        _json_lines(protocol)
    elif which == "mail":
        MailLog(None)._lines(mail)


def instructions(which: str, messages: int) -> int:
    """Instructions callgrind counts for one run of format_once (the whole process)."""
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         os.path.abspath(__file__), "--inside", which, "--messages", str(messages)],
        capture_output=True, text=True, timeout=900, env=os.environ)
    if out.returncode != 0:
        raise SystemExit(f"callgrind run failed ({which}, {messages}):\n{out.stderr[-2000:]}")
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise SystemExit(f"no instruction count in callgrind's output:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1000,
                    help="N: the runs format N and 3N messages' lines (default 1000)")
    ap.add_argument("--formats", default="w3c,json,mail",
                    help="which formatters, comma separated: w3c, json, mail")
    ap.add_argument("--inside", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inside is not None:
        format_once(args.inside, args.messages)
        return 0
    if shutil.which("valgrind") is None:
        sys.exit("needs valgrind (Debian's package)")
    formats = [f for f in args.formats.split(",") if f]
    unknown = [f for f in formats if f not in LINES_PER_MESSAGE]
    if unknown or not formats:
        sys.exit(f"--formats: unknown {', '.join(unknown) or '(none given)'};"
                 f" choose from {', '.join(LINES_PER_MESSAGE)}")
    if args.messages < 1:
        sys.exit("--messages: at least 1")
    n = args.messages
    started = time.monotonic()
    # The batch's set-up alone, so that each formatter's figure is its formatting only.
    base = instructions("none", 3 * n) - instructions("none", n)
    print(f"instructions per line, thousands (callgrind; {n} and {3 * n} messages' lines,"
          " the difference):")
    for which in formats:
        spent = instructions(which, 3 * n) - instructions(which, n) - base
        lines = 2 * n * LINES_PER_MESSAGE[which]
        print(f"  {which:5} {spent / lines / 1000:7.2f}")
    print(f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
