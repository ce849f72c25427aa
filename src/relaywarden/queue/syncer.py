"""The hand-off log's fdatasync, done by a child process (issue 15).

With two relay processes, the receiving process's queue writer thread spent most of its
cost not in its work but in taking the GIL back from the event loop after each system
call (perf record of its futex calls: nearly all are the GIL changing hands). Here the
loop appends a batch to the log segment itself (a copy into the page cache) and asks this
child, over a pipe, for one ``fdatasync`` of the same file: fdatasync(2) makes every
written page of the file durable, whichever descriptor wrote it. The child's answer wakes
the loop through epoll like any socket; only then are the batch's 250s sent. The child has
no GIL to share: it blocks in ``read`` and ``fdatasync`` and nothing else.

Protocol, one line each way: the parent writes a segment's path; the child answers ``0``
or the errno of the failed ``open``/``fdatasync``. The child ends at the end of its input,
so it dies with its parent (kill -9 included: the kernel closes the pipe).

Run as ``python -m relaywarden.queue.syncer`` (the child's whole program is ``main``).
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

#: The command that starts a child; a test points it at one that fails (tests/test_handoff).
COMMAND = [sys.executable, "-m", "relaywarden.queue.syncer"]


def main() -> int:
    fds: dict[bytes, int] = {}
    source = sys.stdin.buffer
    while True:
        line = source.readline()
        if not line:
            return 0
        path = line.rstrip(b"\n")
        try:
            fd = fds.get(path)
            if fd is None:
                fd = fds[path] = os.open(path, os.O_RDONLY)
            os.fdatasync(fd)
            answer = b"0\n"
        except OSError as exc:
            answer = b"%d\n" % (exc.errno or errno.EIO)
            fd = fds.pop(path, None)
            if fd is not None:
                os.close(fd)
        os.write(1, answer)


class Syncer:
    """The parent's side: ``ask(path)``, then ``on_answer(None)`` when the file is durable,
    or ``on_answer(OSError)`` when it may not be (a failed fdatasync, or the child died; a
    new child is started at the next ask). One question at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 on_answer: Callable[[OSError | None], None]) -> None:
        self._loop = loop
        self._on_answer = on_answer
        self._child: subprocess.Popen | None = None
        self._asked = False
        self._buffer = b""

    def ask(self, path: Path) -> None:
        assert not self._asked, "one question at a time"
        question = os.fsencode(path) + b"\n"
        for _ in range(2):
            try:
                child = self._start()
                assert child.stdin is not None
                child.stdin.write(question)
            except BrokenPipeError as exc:
                # The child ended since its last answer (its end not read yet): it never
                # got this question, so a new child is asked, once.
                self._stop()
                error: OSError = exc
                continue
            except OSError as exc:           # no child could be started
                self._stop()
                error = exc
                break
            self._asked = True
            return
        self._loop.call_soon(self._on_answer, error)

    def _start(self) -> subprocess.Popen:
        if self._child is None:
            child = subprocess.Popen(COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     bufsize=0)
            assert child.stdout is not None
            os.set_blocking(child.stdout.fileno(), False)
            self._loop.add_reader(child.stdout.fileno(), self._readable)
            self._child = child
            self._buffer = b""
        return self._child

    def _readable(self) -> None:
        child = self._child
        assert child is not None and child.stdout is not None
        try:
            data = os.read(child.stdout.fileno(), 64)
        except BlockingIOError:
            return
        except OSError as exc:
            data, error = b"", exc
        else:
            error = OSError(errno.EIO, "the fdatasync process ended")
        if not data:                         # the child is gone: what it was asked is unknown
            self._stop()
            if self._asked:
                self._asked = False
                self._on_answer(error)
            return
        self._buffer += data
        if not self._buffer.endswith(b"\n"):
            return
        answer, self._buffer = self._buffer.strip(), b""
        self._asked = False
        if answer == b"0":
            self._on_answer(None)
        else:
            code = int(answer) if answer.isdigit() else errno.EIO
            self._on_answer(OSError(code, f"fdatasync: {os.strerror(code)}"))

    def _stop(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        assert child.stdout is not None and child.stdin is not None
        self._loop.remove_reader(child.stdout.fileno())
        for pipe in (child.stdin, child.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    def close(self) -> None:
        self._asked = False
        try:
            self._stop()
        except RuntimeError:
            pass    # the loop is closed already: the child sees the end of its input


if __name__ == "__main__":
    sys.exit(main())
