"""How the pickup loop learns that files arrived: inotify on a local disk, polling elsewhere.

inotify (Linux, through ``inotify_simple``: a ctypes wrapper of the three system calls)
wakes the loop as soon as a file is created, closed after writing, renamed into the folder
or touched, so a local folder costs nothing while it is empty and a file waits only its
``settle`` time. inotify sees only what this kernel writes: on a folder shared over the
network (SMB/CIFS, NFS, ...) the files the applications write on *other* machines raise no
event, so there the folder is polled every ``poll_interval`` seconds, as IIS polled it.

``[pickup] watch`` chooses: ``"auto"`` (the default) uses inotify when it is there and the
folder is on a local file system (read from /proc/self/mountinfo), else polls; ``"inotify"``
insists (a config error where it is not available) and ``"poll"`` always polls. With
inotify the folder is still read in full every ``RESCAN`` seconds, in case an event was lost
(the kernel's queue overflows past ``max_queued_events``).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

#: With inotify, a full look at the folder at least this often (seconds), events or not.
RESCAN = 60.0

# File system types whose files other machines write (an inotify watch does not see them).
# fuse.* mounts are mostly network ones (sshfs, rclone, davfs2, s3fs), so all count.
NETWORK_FS = frozenset({
    "nfs", "nfs4", "cifs", "smb", "smb3", "smbfs", "ncpfs", "afs", "coda", "ceph",
    "glusterfs", "lustre", "gpfs", "9p", "ocfs2", "gfs2", "davfs", "beegfs", "orangefs",
})


def inotify_available() -> bool:
    """True on Linux with the ``inotify_simple`` package importable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import inotify_simple  # noqa: F401
    except ImportError:
        return False
    return True


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes (proc(5)).
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def fs_type(mountinfo: str, path: Path) -> str | None:
    """The file system type of the mount that holds ``path`` (an absolute, resolved path),
    from the text of /proc/self/mountinfo (pure). None if no line matches."""
    best, found = -1, None
    target = str(path)
    for line in mountinfo.splitlines():
        parts = line.split(" - ", 1)
        if len(parts) != 2:
            continue
        fields, rest = parts[0].split(), parts[1].split()
        if len(fields) < 5 or not rest:
            continue
        mount = _unescape(fields[4])
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        # The longest mount point wins; a later line of the same one (mounted over) too.
        if inside and len(mount) >= best:
            best, found = len(mount), rest[0]
    return found


def is_network(kind: str | None) -> bool:
    return kind is not None and (kind in NETWORK_FS or kind.startswith("fuse."))


def choose(setting: str, folder: Path, mountinfo: str | None = None) -> tuple[str, str]:
    """("inotify" | "poll", why) for ``[pickup] watch = setting`` on ``folder``;
    ``mountinfo``: the text of /proc/self/mountinfo (read when not given)."""
    if setting == "poll":
        return "poll", "pickup.watch = \"poll\""
    if not inotify_available():
        # "inotify" is refused by the config check where it is not available.
        return "poll", "inotify is not available here"
    if setting == "inotify":
        return "inotify", "pickup.watch = \"inotify\""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text(errors="replace")
        except OSError:
            return "poll", "the file system type is unknown (no /proc/self/mountinfo)"
    kind = fs_type(mountinfo, folder.resolve())
    if kind is None:
        return "poll", "the file system type is unknown"
    if is_network(kind):
        return "poll", f"{folder} is on a network file system ({kind})"
    return "inotify", f"{folder} is on a local file system ({kind})"


class DirWatch:
    """``await wait(timeout)``: returns when the folder may have changed or after
    ``timeout`` seconds. Polling: after the timeout only. inotify: at the first event."""

    def __init__(self, folder: Path, mode: str) -> None:
        self.folder = folder
        self.mode = mode
        self._inotify: Any = None    # inotify_simple.INotify while watching
        self._event = asyncio.Event()

    def start(self) -> None:
        self._event = asyncio.Event()
        if self.mode != "inotify":
            return
        from inotify_simple import INotify, flags

        self._inotify = INotify(nonblocking=True)
        try:
            # Not IN_MODIFY (one event a write): a file still being written is waited for by
            # its settle time, and looked at again then. IN_ATTRIB: a touch (utime).
            self._inotify.add_watch(self.folder, flags.CREATE | flags.CLOSE_WRITE
                                    | flags.MOVED_TO | flags.ATTRIB)
        except OSError:
            self._inotify.close()
            self._inotify = None
            raise
        # The callback reads the events at once: a level-triggered reader left unread would
        # be called again at every turn of the loop.
        asyncio.get_running_loop().add_reader(self._inotify.fileno(), self._drain)

    def _drain(self) -> None:
        from inotify_simple import flags

        try:
            events = self._inotify.read(timeout=0)
        except (BlockingIOError, OSError):
            events = []
        self._event.set()
        if any(event.mask & flags.IGNORED for event in events):
            # The watch is gone (the folder removed, or unmounted): poll from now on.
            print(f"relaywarden: pickup: {self.folder} is no longer watched by inotify; "
                  "polling it", file=sys.stderr, flush=True)
            self.close()
            self.mode = "poll"

    def close(self) -> None:
        if self._inotify is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._inotify.fileno())
            except RuntimeError:
                pass                      # the loop is gone already
            self._inotify.close()
            self._inotify = None

    def wake(self) -> None:
        """End a wait now (the relay is stopping)."""
        self._event.set()

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._event.wait(), timeout=max(timeout, 0))
        except asyncio.TimeoutError:
            pass
        self._event.clear()
