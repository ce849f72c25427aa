"""The Drop directory: a route whose next hop is ``drop:/path/to/Drop`` writes its mail
into a folder, as IIS did for its local domain, for the applications that read it.

Each delivery is one ``.eml`` file: the envelope first, as IIS wrote it (``X-Sender:`` and
one ``X-Receiver:`` line per recipient), then the message as it was queued (its Received
fields included). Durability as an SMTP server's 250: the file is written under a hidden
temporary name in the same folder (``.ID.tmp``: not an ``.eml``, so no reader takes it
half written), fsynced, renamed to its name and the folder fsynced; only then is the
recipient delivered. The name, ``QUEUEID-N.eml`` (N: the first recipient's index), is the
same if the attempt is made again after a crash between the rename and the queue's record:
the file is replaced, not doubled.

A folder that cannot be written (gone, full, read-only, a failing disk) defers: the message
stays queued and is tried again on the retry schedule, never bounced at once, never lost.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from relaywarden.queue.fileops import REAL, FileOps
from relaywarden.smtp.reply import reply

if TYPE_CHECKING:
    from relaywarden.config.schema import Config, HopConfig
    from relaywarden.delivery.courier import CourierContext
    from relaywarden.delivery.engine import Outcome
    from relaywarden.delivery.routing import Route
    from relaywarden.queue.store import DueMessage, DueRecipient

_CHUNK = 1 << 20

#: `config check`, `serve` and a reload check that the folder is there and writable (a
#: typo is caught at once). The delivery and admin processes that `serve` starts do not:
#: the folder may be gone by then (a share unmounted), and that must defer the mail, not
#: stop the delivery process from starting.
CHECK_FOLDER = True


def envelope_lines(sender: str, recipients: Sequence[str]) -> bytes:
    """IIS's Drop envelope: X-Sender, then one X-Receiver a recipient (pure)."""
    lines = [f"X-Sender: {sender or '<>'}"] + [f"X-Receiver: {r}" for r in recipients]
    return "".join(line + "\r\n" for line in lines).encode("utf-8")


class DropScheme:
    """``drop:PATH`` (delivery.courier.SCHEMES["drop"])."""

    def parse(self, rest: str) -> str:
        path = rest.strip()
        if not path:
            raise ValueError('expected "drop:/path/to/Drop"')
        if not os.path.isabs(path):
            raise ValueError(f"{path!r}: the Drop directory must be an absolute path")
        return os.path.normpath(path)

    def check(self, rest: str, cfg: Config, settings: HopConfig):
        path = Path(rest)
        where = ("next_hops", 0)
        if not CHECK_FOLDER:
            return []
        if not path.exists():
            return [(where, f"the Drop directory {rest!r} does not exist")]
        if not path.is_dir():
            return [(where, f"the Drop directory {rest!r} is not a directory")]
        if not os.access(path, os.W_OK | os.X_OK):
            return [(where, f"the Drop directory {rest!r} is not writable by this user")]
        return []

    def build(self, rest: str, cfg: Config, settings: HopConfig, *, route: str):
        return DropCourier(Path(rest), route=route)


SCHEME = DropScheme()


class DropCourier:
    def __init__(self, folder: Path, *, route: str, files: FileOps = REAL) -> None:
        self.folder = folder
        self.route = route
        self.files = files
        self.label = f"drop:{folder}"

    async def deliver(self, message: DueMessage, body: bytes | Path,
                      recipients: Sequence[DueRecipient], route: Route,
                      context: CourierContext) -> list[Outcome]:
        from relaywarden.delivery.engine import Kind, Outcome

        name = f"{message.queue_id}-{recipients[0].idx}.eml"
        head = envelope_lines(message.sender, [r.address for r in recipients])
        try:
            await asyncio.to_thread(self._write, name, head, body)
        except OSError as exc:
            # ENOSPC, EACCES, ENOENT, EIO...: a local, temporary failure (RFC 3463 4.3.0
            # "other or undefined mail system status"): the retry schedule takes it on.
            why = reply(451, "4.3.0", f"cannot write to the Drop directory {self.folder}: "
                                      f"{exc.strerror or exc}")
            return [Outcome(r, Kind.DEFERRED, why, remote=self.label, route=route.name,
                            synthesized=True) for r in recipients]
        done = reply(250, "2.0.0", f"written to {self.folder / name}")
        return [Outcome(r, Kind.DELIVERED, done, remote=self.label, route=route.name)
                for r in recipients]

    def _write(self, name: str, head: bytes, body: bytes | Path) -> None:
        files = self.files
        fd, tmp = files.create_temp(self.folder, f".{name[:-4]}.")
        try:
            try:
                files.write(fd, head)
                if isinstance(body, Path):
                    with open(body, "rb") as src:
                        while chunk := src.read(_CHUNK):
                            files.write(fd, chunk)
                else:
                    files.write(fd, body)
                files.fsync(fd)
            finally:
                files.close(fd)
            # Readers see the whole file under its name, or nothing (rename(2) is atomic).
            os.replace(tmp, self.folder / name)
        except BaseException:
            try:
                files.unlink(tmp)
            except OSError:
                pass
            raise
        files.fsync_dir(self.folder)
