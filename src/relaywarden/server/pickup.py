"""The Pickup directory: .eml files that applications write into a folder, queued as mail.

What IIS did, and .NET (System.Net.Mail ``SmtpDeliveryMethod.PickupDirectoryFromIis`` /
``SpecifiedPickupDirectory``) and CDO scripts rely on: the envelope comes from leading
``X-Sender:`` / ``X-Receiver:`` lines (removed from the message), else from the header
fields (From, else Sender; To, Cc and Bcc), and ``Bcc:`` never leaves (RFC 5322 3.6.3).

Durability, the same as an SMTP client's 250: a file is removed only after its message is
committed to the queue. A file is first *claimed*: renamed (atomically, on the same file
system) into ``DIR/.inflight/QUEUEID.eml``, so the queue ID it will get is in its name. After
a crash (kill -9) the claimed files are looked at again: a queue ID the queue has was
committed (the file is removed), one it has not is committed now, under that ID. Files are
committed together (the queue's group commit: one fsync for a batch, not one a file). A
file still being written is not taken: only names ending in ``.eml``, unmodified for
``settle`` seconds.

A rename or an unlink is durable only once its directory is fsynced (rename(2) and
fsync(2); ext4 and XFS may lose a name change at power loss otherwise). So, once a batch:
the claims (``DIR`` and ``.inflight``) are fsynced before their messages are committed (a
claim lost after the commit would bring the file back under its old name: taken again, a
duplicate), and ``.inflight`` after the unlinks of the committed files, before delivery is
woken (an unlink lost would bring back a claimed file whose message may be delivered and
gone from the queue by the restart: a duplicate too). Left: the few milliseconds between
the commit and that fsync, in which a delivery would have to finish and the machine lose
power. A file system that cannot fsync a directory (EINVAL on some network shares) commits
names as it goes or not at all: pickup goes on there.

Loops: a message whose header has more than ``relay.max_hops`` Received fields (RFC 5321
6.3; an application that copies the Drop folder into the Pickup folder, or a route back to
itself) goes to badmail with the reason, every recipient, as from an SMTP client.

A file that cannot be read as a message goes into the badmail folder (``ID.eml`` and
``ID.json`` with the reason), as a refused message from an SMTP client would be logged.
The policy is the configured group's (sender and recipient rules; a violation puts the
recipient in badmail, since there is no client to answer 550 to).

``parse`` is pure; ``Pickup`` does the I/O. The relay starts it in the receiving process
(app.py). It learns of new files by inotify on a local disk and by polling on a network
share (server/dirwatch.py; ``[pickup] watch``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import re
import sys
import time
from dataclasses import dataclass
from email.utils import formatdate, getaddresses
from ipaddress import ip_address, ip_network
from pathlib import Path

from relaywarden import metrics
from relaywarden.delivery.badmail import write_files
from relaywarden.logs.maillog import MailEvent
from relaywarden.policy import Action, ClientFacts, ClientGroup, ListenerPolicy, Policy
from relaywarden.policy.gates import check_hops
from relaywarden.policy.hops import ReceivedCounter
from relaywarden.queue.store import (
    Envelope,
    RecipientRecord,
    RecipientStatus,
    StoreError,
    new_queue_id,
)
from relaywarden.server.dirwatch import RESCAN, DirWatch, choose
from relaywarden.smtp.address import Address, AddressError, parse_path

#: Files claimed and committed together in one round (one group commit).
BATCH = 500
INFLIGHT = ".inflight"
LISTENER = "pickup"
_ENVELOPE_LINE = re.compile(rb"^(x-sender|x-receiver)[ \t]*:(.*)$", re.IGNORECASE)
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:")


class PickupError(ValueError):
    """The file is not a message the relay can send; the text is the reason."""


@dataclass(frozen=True, slots=True)
class PickupMessage:
    sender: Address | None
    recipients: tuple[Address, ...]
    content: bytes            # the message to send: CRLF lines, envelope lines and Bcc gone
    smtputf8: bool


def _address(text: str, what: str, *, null_ok: bool) -> Address | None:
    value = text.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    if not value:
        if null_ok:
            return None
        raise PickupError(f"{what}: empty address")
    try:
        address = parse_path(f"<{value}>", utf8=True)
    except AddressError:
        raise PickupError(f"{what}: {value!r} is not an address") from None
    if address is not None and address.domain == "":
        raise PickupError(f"{what}: {value!r} has no domain")
    return address


def _field_name(line: bytes) -> bytes:
    """The name of a header field's first line (which matched _FIELD when it was read)."""
    found = _FIELD.match(line)
    assert found is not None
    return found[1]


def _recipient(text: str) -> Address:
    """An X-Receiver line's address (never the null path: _address refuses it)."""
    address = _address(text, "X-Receiver", null_ok=False)
    assert address is not None
    return address


def _field_addresses(values: list[str], what: str) -> list[Address]:
    out = []
    for _name, addr in getaddresses(values):
        if addr:
            found = _address(addr, what, null_ok=False)
            if found is not None:
                out.append(found)
    return out


def parse(data: bytes, *, max_size: int = 0) -> PickupMessage:
    """The envelope and the content to send of one pickup file (pure)."""
    if not data.strip():
        raise PickupError("the file is empty")
    if max_size and len(data) > max_size:
        raise PickupError(f"{len(data)} bytes is more than relay.max_message_size ({max_size})")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    sender_lines: list[str] = []
    receiver_lines: list[str] = []
    at = 0
    while at < len(lines) and (found := _ENVELOPE_LINE.match(lines[at])):
        text = found[2].decode("utf-8", "replace")
        (sender_lines if found[1].lower() == b"x-sender" else receiver_lines).append(text)
        at += 1
    # The header section: fields (with folded continuation lines) up to the empty line.
    header: list[list[bytes]] = []
    while at < len(lines) and lines[at] != b"":
        line = lines[at]
        if line[:1] in (b" ", b"\t") and header:
            header[-1].append(line)
        elif _FIELD.match(line):
            header.append([line])
        else:
            raise PickupError(f"line {at + 1} is neither a header field nor a continuation: "
                              f"{line[:60].decode('utf-8', 'replace')!r}")
        at += 1
    if not header:
        raise PickupError("no header fields: not a message")
    body = lines[at:]

    def values(name: bytes) -> list[str]:
        out = []
        for field in header:
            fname = _field_name(field[0])
            if fname.lower() == name:
                text = b" ".join(part.strip() for part in [field[0][len(fname) + 1:], *field[1:]])
                out.append(text.decode("utf-8", "replace").strip())
        return out

    if len(sender_lines) > 1:
        raise PickupError("more than one X-Sender line")
    if sender_lines:
        sender = _address(sender_lines[0], "X-Sender", null_ok=True)
    else:
        froms = _field_addresses(values(b"from"), "From")
        senders = _field_addresses(values(b"sender"), "Sender")
        if senders:
            sender = senders[0]
        elif froms:
            sender = froms[0]
        else:
            raise PickupError("no X-Sender line and no From: address")
    if receiver_lines:
        recipients = [_recipient(text) for text in receiver_lines]
    else:
        recipients = (_field_addresses(values(b"to"), "To") + _field_addresses(values(b"cc"), "Cc")
                      + _field_addresses(values(b"bcc"), "Bcc"))
    unique: dict[str, Address] = {}
    for rcpt in recipients:
        unique.setdefault(str(rcpt).lower(), rcpt)
    if not unique:
        raise PickupError("no recipients: no X-Receiver line and no To:, Cc: or Bcc: address")
    # Bcc: is for the envelope only: never sent on (RFC 5322 3.6.3).
    kept = [field for field in header if _field_name(field[0]).lower() != b"bcc"]
    content = b"\r\n".join(line for field in kept for line in field) + b"\r\n"
    content += b"\r\n" + b"".join(line + b"\r\n" for line in body[1:]) if body else b""
    smtputf8 = any(not str(a).isascii() for a in [*unique.values(), sender] if a is not None)
    return PickupMessage(sender=sender, recipients=tuple(unique.values()), content=content,
                         smtputf8=smtputf8)


# ------------------------------------------------------------------------------ the policy


def pickup_policy(cfg) -> tuple[Policy, ClientFacts]:
    """The policy of the pickup directory: every recipient domain may be relayed to (the
    files come from local applications, as IIS's pickup relayed), then the group's
    sender and recipient rules. The group is made to contain the pickup "client"."""
    from relaywarden.config.build import _group

    everyone = (ip_network("0.0.0.0/0"), ip_network("::/0"))
    groups: tuple[ClientGroup, ...] = ()
    name = cfg.pickup.group
    if name is not None:
        group = _group(name, cfg.groups[name])
        groups = (dataclasses.replace(group, networks=everyone, hostnames=(), users=(),
                                      directory_groups=()),)
    policy = Policy({LISTENER: ListenerPolicy(
        name=LISTENER, relay_networks=everyone, groups=groups,
        hosted_domains=tuple(cfg.relay.hosted_domains),
        postmaster=cfg.relay.postmaster or f"postmaster@{cfg.relay.hostname}")})
    return policy, ClientFacts(listener=LISTENER, ip=ip_address("127.0.0.1"))


_received_date = lambda now: formatdate(now, localtime=True)  # noqa: E731


def _clean(text: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:200]


class Pickup:
    """Polls the directory and queues what it finds (the receiving process runs it)."""

    def __init__(self, cfg, services) -> None:
        self.cfg = cfg
        self.services = services
        self.dir: Path = cfg.pickup.dir
        self.inflight = self.dir / INFLIGHT
        self.policy, self.client = pickup_policy(cfg)
        self._task: asyncio.Task | None = None
        self._stopping = False
        mode, self.why = choose(cfg.pickup.watch, self.dir)
        self.watch = DirWatch(self.dir, mode)
        # When the next file seen but not settled yet may be taken (time.time()), or None.
        self._next_settle: float | None = None
        # Something to try again soon (a claim or a commit that failed), inotify or not.
        self._retry = False

    def start(self) -> None:
        self.inflight.mkdir(exist_ok=True)
        try:
            self.watch.start()
        except OSError as exc:           # out of inotify watches (fs.inotify.max_user_watches)
            self.watch = DirWatch(self.dir, "poll")
            self.watch.start()
            self.why = f"inotify failed: {exc.strerror}"
        print(f"relaywarden: pickup: {self.dir}, {self.watch.mode} ({self.why})",
              file=sys.stderr, flush=True)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stopping = True
        self.watch.wake()
        if self._task is not None:
            # A round under way finishes its commits (it is awaited, not cancelled mid-way).
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=10)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        self.watch.close()

    def _timeout(self) -> float:
        """How long to wait before the next look (an inotify event may end it sooner)."""
        poll = self.cfg.pickup.poll_interval
        if self.watch.mode != "inotify" or self._retry:
            return poll
        if self._next_settle is not None:
            # A file seen still settling: looked at again once it may be taken.
            return min(max(self._next_settle - time.time(), 0) + 0.02, RESCAN)
        return RESCAN

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self.round()
            except Exception as exc:  # noqa: BLE001 - a fault must not stop the relay
                self._retry = True
                print(f"relaywarden: pickup: {exc}", file=sys.stderr, flush=True)
            if self._stopping:
                break
            await self.watch.wait(self._timeout())

    async def round(self) -> int:
        """One look at the directory: claimed files left over, then new ones. Returns how
        many messages were queued."""
        self._next_settle = None
        self._retry = False
        queued = await self._settle_inflight()
        while not self._stopping:
            claimed = await asyncio.to_thread(self._claim, BATCH)
            if not claimed:
                break
            queued += await self._commit(claimed)
            await self._inflow()
            if len(claimed) < BATCH:
                break
        return queued

    async def _inflow(self) -> None:
        """Back-pressure (delivery.in_flow_delay), as for an SMTP client and as Postfix's
        pickup meets it in cleanup: while delivery is behind, the next batch waits for it
        to catch up, at most that long."""
        later = self.services.store.inflow()
        if later is not None:
            started = time.monotonic()
            await later
            metrics.inflow_delayed(LISTENER, time.monotonic() - started)

    # -- files ---------------------------------------------------------------------------

    def _sync_dirs(self, *dirs: Path) -> bool:
        """fsync each directory (its renames and unlinks reach the disk). False when one
        failed (EIO): what was to be made durable may not be, the caller waits."""
        files = self.services.store.files
        for path in dirs:
            try:
                files.fsync_dir(path)
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF,
                                 errno.EACCES, errno.EPERM):
                    continue             # cannot fsync a directory there (a network share)
                print(f"relaywarden: pickup: fsync of {path} failed: {exc.strerror}",
                      file=sys.stderr, flush=True)
                self._retry = True
                return False
        return True

    def _claim(self, limit: int) -> list[tuple[str, Path]]:
        """Rename up to ``limit`` settled .eml files into .inflight under new queue IDs."""
        now = time.time()
        settle = self.cfg.pickup.settle
        out: list[tuple[str, Path]] = []
        try:
            entries = os.scandir(self.dir)
        except OSError as exc:
            print(f"relaywarden: pickup: cannot read {self.dir}: {exc.strerror}", file=sys.stderr,
                  flush=True)
            return out
        with entries:
            candidates = []
            for entry in entries:
                if entry.name.startswith(".") or not entry.name.lower().endswith(".eml"):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                # ctime too: a rename into place updates it, the mtime of a copy may be old.
                changed = max(st.st_mtime, st.st_ctime)
                if now - changed < settle:
                    ready = changed + settle
                    if self._next_settle is None or ready < self._next_settle:
                        self._next_settle = ready
                    continue
                candidates.append((st.st_mtime, entry.name))
        for _, name in sorted(candidates)[:limit]:
            qid = new_queue_id()
            # QUEUEID~ORIGINAL.eml: the ID for the restart, the name for the badmail report.
            target = self.inflight / f"{qid}~{name}"
            try:
                os.rename(self.dir / name, target)
            except FileNotFoundError:
                continue          # taken by another relay on the same share
            except OSError as exc:
                print(f"relaywarden: pickup: cannot claim {name}: {exc.strerror}",
                      file=sys.stderr, flush=True)
                self._retry = True
                continue
            out.append((qid, target))
        # The claims durable before any of these messages is committed: one fsync of each
        # directory for the batch. If that fails the files stay in .inflight, committed by
        # a later round (_settle_inflight syncs again first).
        if out and not self._sync_dirs(self.inflight, self.dir):
            return []
        return out

    async def _settle_inflight(self) -> int:
        """Claimed files of a run that stopped before removing them: committed ones are
        removed, the others committed now (under the queue ID in their name)."""
        try:
            names = sorted(p for p in self.inflight.iterdir() if "~" in p.name)
        except OSError:
            return 0
        todo = []
        removed = False
        for path in names:
            qid = path.name.split("~", 1)[0]
            if await self.services.store.sender_of(qid) is not None:
                path.unlink(missing_ok=True)       # committed before the stop
                removed = True
            else:
                todo.append((qid, path))
        # The claims of a run that stopped before its fsync: durable before the commit.
        if (removed or todo) and not await asyncio.to_thread(
                self._sync_dirs, self.inflight, self.dir):
            return 0
        queued = 0
        for start in range(0, len(todo), BATCH):
            queued += await self._commit(todo[start:start + BATCH])
        return queued

    # -- messages ------------------------------------------------------------------------

    async def _commit(self, claimed: list[tuple[str, Path]]) -> int:
        store = self.services.store
        log = self.services.mail_log
        pending = []
        for qid, path in claimed:
            try:
                data = await asyncio.to_thread(path.read_bytes)
            except FileNotFoundError:
                continue
            try:
                message = parse(data, max_size=self.cfg.relay.max_message_size)
            except PickupError as exc:
                await self._badmail(qid, path, data, str(exc))
                continue
            envelope, spool = self._envelope(qid, path, message)
            pending.append((envelope, spool, path, store.start_commit(envelope, spool)))
        queued = 0
        removed = False
        for envelope, spool, path, done in pending:
            try:
                await done
            except StoreError as exc:
                # Left in .inflight: the next round tries again (nothing is lost).
                log.event(MailEvent.REJECT, stage="queue", listener=LISTENER, client="pickup",
                          id=envelope.queue_id, reason=str(exc))
                spool.discard()
                continue
            # Committed: only now does the file go.
            path.unlink(missing_ok=True)
            removed = True
            spool.discard()
            queued += 1
            at = envelope.received_at
            for r in envelope.recipients:
                if r.status is RecipientStatus.BADMAIL:
                    log.event(MailEvent.BADMAIL, at=at, id=envelope.queue_id,
                              sender=envelope.sender, to=r.address, rule=r.rule, reason=r.reason)
            log.event(MailEvent.QUEUED, at=at, id=envelope.queue_id, listener=LISTENER,
                      client="pickup", helo="pickup", user=None, sender=envelope.sender,
                      to=",".join(r.address for r in envelope.recipients), size=spool.size)
        if removed or len(pending) < len(claimed):
            # The unlinks (of this batch's committed and badmail files) durable, once,
            # before delivery is woken.
            await asyncio.to_thread(self._sync_dirs, self.inflight)
        if queued:
            self.services.on_queued()
        return queued

    def _envelope(self, qid: str, path: Path, message: PickupMessage):
        policy, client = self.policy, self.client
        counter = ReceivedCounter()
        counter.feed(message.content)
        loop = check_hops(counter.count, self.cfg.relay.max_hops)
        if loop is not None:
            # RFC 5321 6.3: a loop (this pickup is on its way, or a route leads back to it).
            # Every recipient to badmail, as the SMTP session does; the admin sees why.
            self.services.mail_log.event(
                MailEvent.REJECT, stage="data", listener=LISTENER, client="pickup", id=qid,
                code=loop.reply.code, enhanced=loop.reply.enhanced, rule=loop.rule,
                reason=loop.detail, action="badmail")
        sender_decision = policy.check_sender(client, message.sender)
        records = []
        for rcpt in message.recipients:
            if loop is not None:
                records.append(RecipientRecord(address=str(rcpt),
                                               status=RecipientStatus.BADMAIL,
                                               rule=loop.rule, reason=loop.detail))
                continue
            decision = (sender_decision if sender_decision.action is not Action.ACCEPT
                        else policy.check_recipient(client, message.sender, rcpt))
            if decision.action is Action.ACCEPT:
                status = RecipientStatus.QUEUED
            else:
                # No client to answer 550 to: the admin sees it in badmail (and is told).
                status = RecipientStatus.BADMAIL
            records.append(RecipientRecord(address=str(rcpt), status=status,
                                           rule=decision.rule, reason=decision.detail))
        now = time.time()
        for_rcpt = f"\r\n\tfor <{_clean(records[0].address)}>" if len(records) == 1 else ""
        received = (f"Received: by {self.cfg.relay.hostname} (relaywarden, from pickup "
                    f"directory {_clean(str(self.dir))})\r\n"
                    f"\tid {qid}{for_rcpt};\r\n\t{_received_date(now)}\r\n").encode("ascii")
        spool = self.services.store.new_spool()
        spool.write(received)
        spool.write(message.content)
        envelope = Envelope(
            queue_id=qid, received_at=now, listener=LISTENER, client_ip="127.0.0.1",
            client_name=None, helo="pickup", auth_user=None,
            sender="" if message.sender is None else str(message.sender),
            recipients=tuple(records), smtputf8=message.smtputf8,
            client_group=policy.group_of(client),
        )
        return envelope, spool

    async def _badmail(self, qid: str, path: Path, data: bytes, reason: str) -> None:
        """An unreadable file: kept in the badmail folder with the reason, then removed."""
        original = path.name.split("~", 1)[-1]
        entry = {"id": qid, "address": "", "rule": "pickup", "sender": "",
                 "reason": f"pickup file {original!r} from {self.dir}: {reason}",
                 "filed_at": time.time()}
        try:
            await asyncio.to_thread(write_files, self.cfg.badmail.dir, qid, data, [entry])
        except OSError as exc:
            # A full disk: the file stays claimed; a later round files it.
            print(f"relaywarden: pickup: cannot write {qid} to badmail: {exc.strerror}",
                  file=sys.stderr, flush=True)
            self._retry = True
            return
        # Its badmail name durable before the pickup file goes (else a power loss could
        # keep neither); failing that, the file stays claimed and is filed again later
        # (the same ID.eml: once).
        if not await asyncio.to_thread(self._sync_dirs, self.cfg.badmail.dir):
            return
        path.unlink(missing_ok=True)
        self.services.mail_log.event(MailEvent.BADMAIL, id=qid, listener=LISTENER,
                                     rule="pickup", reason=entry["reason"])
