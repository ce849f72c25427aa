"""tests/downstream.py's server in a process of its own, for load and kill runs.

    python tests/downstream_process.py PORT RECORD_FILE

It runs a Downstream on 127.0.0.1:PORT, prints "ready" when it listens, and appends one line
to RECORD_FILE for every message it accepts: the message's X-Token header (or "-" when it
has none). A process of its own, so that it survives whatever the test does to the relay,
and so that its work does not compete with the test's clients for one interpreter. SIGTERM
writes what is pending and stops it.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from downstream import Downstream  # noqa: E402

TOKEN = re.compile(rb"^X-Token: (\S+)\r?$", re.MULTILINE)


def main() -> int:
    port, record = int(sys.argv[1]), Path(sys.argv[2])
    down = Downstream(port).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    written = 0
    with record.open("a") as out:
        while True:
            stopping = stop.wait(0.1)
            with down.lock:
                new = down.messages[written:]
                written += len(new)
            for message in new:
                head = message.content.split(b"\r\n\r\n", 1)[0]
                found = TOKEN.search(head)
                out.write((found.group(1).decode() if found else "-") + "\n")
            out.flush()
            if stopping:
                break
    down.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
