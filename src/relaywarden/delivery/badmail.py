"""The badmail folder: quarantined messages as files an admin can open, and the notices.

The queue is the durable record (a badmail recipient is a row with status "badmail"); the
folder is the admin's view of it, as IIS kept C:\\inetpub\\mailroot\\Badmail: one
``ID.eml`` (the message as received) and one ``ID.json`` (who, why, which rule) per message.

Notices are summarised: at most one email per ``notify_interval`` however many messages
arrived, so a scanner stuck in a loop does not turn into a flood of notices.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import re
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relaywarden.logs.maillog import MailEvent, MailLog
from relaywarden.queue.store import (
    Envelope,
    RecipientRecord,
    RecipientStatus,
    Store,
    new_queue_id,
)

_PLACEHOLDER = re.compile(r"\{(path|id|reason)\}")
#: The rule name of notice recipients (a failed notice is never announced by another one).
NOTICE_RULE = "badmail.notify"
#: A badmail command that runs longer than this is killed.
COMMAND_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BadmailSettings:
    directory: Path
    notify: str | None            # address told; None: nobody
    notify_interval: float = 300
    command: tuple[str, ...] = ()  # argv; {path}, {id}, {reason} are replaced
    hostname: str = "localhost"
    postmaster: str | None = None   # relay.postmaster: the notice's From (default postmaster@hostname)
    config_path: str | None = None  # the relay's config file: the notice's commands name it


@dataclass(slots=True)
class _Pending:
    entries: list[dict] = field(default_factory=list)
    last_notice: float = 0.0


def write_files(directory: Path, queue_id: str, body: bytes | Path, entries: list[dict]) -> Path:
    """Write (or extend) ID.eml and ID.json; returns the .eml path. A body stored as a file
    is copied in chunks, not read whole."""
    directory.mkdir(parents=True, exist_ok=True)
    eml = directory / f"{queue_id}.eml"
    meta = directory / f"{queue_id}.json"
    if not eml.exists():
        tmp = eml.with_suffix(".eml.tmp")
        # A body file is opened first: if it is gone, nothing is left half written.
        src = open(body, "rb") if isinstance(body, Path) else None
        try:
            with open(tmp, "wb") as fh:
                if src is not None:
                    shutil.copyfileobj(src, fh, 1 << 20)
                elif not isinstance(body, Path):
                    fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            if src is not None:
                src.close()
        tmp.replace(eml)
    known: dict[str, Any] = (json.loads(meta.read_text()) if meta.exists()
                             else {"id": queue_id, "recipients": []})
    seen = {r["address"] for r in known["recipients"]}
    known["recipients"].extend(e for e in entries if e["address"] not in seen)
    tmp = meta.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(known, indent=2))
    tmp.replace(meta)
    return eml


def summary_message(settings: BadmailSettings, entries: list[dict], now: float) -> bytes:
    from email.utils import formatdate, make_msgid

    lines = [
        f"{len(entries)} message(s) were put in the badmail folder of {settings.hostname}",
        f"({settings.directory}).",
        "",
    ]
    for e in entries[:200]:
        lines.append(f"{e['id']}  from <{e['sender']}>  to <{e['address']}>")
        lines.append(f"    {e['rule']}: {e['reason']}")
    # The commands as they work when pasted: with the relay's own config file.
    opt = f" --config {shlex.quote(settings.config_path)}" if settings.config_path else ""
    if len(entries) > 200:
        lines.append(f"... and {len(entries) - 200} more: relaywarden badmail list{opt}")
    lines += ["", f"Release one with: relaywarden badmail release ID{opt}",
              f"Delete one with:  relaywarden badmail delete ID{opt}", ""]
    text = "\r\n".join(lines)
    headers = [
        f"From: relaywarden <{settings.postmaster or f'postmaster@{settings.hostname}'}>",
        f"To: <{settings.notify}>",
        f"Subject: [relaywarden] {len(entries)} message(s) in badmail",
        f"Date: {formatdate(now, localtime=True)}",
        f"Message-ID: {make_msgid(domain=settings.hostname)}",
        "Auto-Submitted: auto-generated",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
    ]
    return ("\r\n".join(headers) + "\r\n\r\n" + text).encode("utf-8")


class Badmail:
    """Files new badmail recipients and sends the summarised notices."""

    def __init__(self, *, store: Store, settings: BadmailSettings, mail_log: MailLog,
                 wake=lambda: None, clock=time.time) -> None:
        self.store = store
        self.settings = settings
        self.mail_log = mail_log
        self._wake = wake
        self._clock = clock
        self._pending = _Pending()
        self._tasks: set[asyncio.Task] = set()

    async def sweep(self) -> int:
        """File what is new; send a notice if one is due. Returns how many were filed."""
        rows = await self.store.unfiled_badmail()
        by_message: dict[str, list[tuple[int, str, str, str]]] = {}
        for qid, idx, address, rule, reason in rows:
            by_message.setdefault(qid, []).append((idx, address, rule, reason))
        filed: list[tuple[str, int]] = []
        for qid, recipients in by_message.items():
            body = await self.store.locate_body(qid)
            if body is None:
                continue
            sender = await self.store.sender_of(qid)
            entries = [{"id": qid, "address": a, "rule": rule, "reason": reason,
                        "sender": sender, "filed_at": self._clock()}
                       for _, a, rule, reason in recipients]
            try:
                path = await asyncio.to_thread(write_files, self.settings.directory, qid, body,
                                               entries)
            except FileNotFoundError:
                continue   # its body file went with the message (deleted meanwhile)
            filed.extend((qid, idx) for idx, *_ in recipients)
            # A notice that could not be delivered is filed, but not announced by another
            # notice (to the same unreachable admin): that would loop forever.
            self._pending.entries.extend(e for e in entries if e["rule"] != NOTICE_RULE)
            for e in entries:
                self._run_command(path, e)
        if filed:
            await self.store.mark_filed(filed)
        await self._maybe_notify()
        return len(filed)

    async def _maybe_notify(self) -> None:
        pending = self._pending
        now = self._clock()
        if self.settings.notify is None:
            pending.entries.clear()   # nobody to tell; the folder and the mail log have it
            return
        if not pending.entries:
            return
        if now - pending.last_notice < self.settings.notify_interval:
            return
        entries, pending.entries = pending.entries, []
        pending.last_notice = now
        spool = self.store.new_spool()
        spool.write(summary_message(self.settings, entries, now))
        env = Envelope(
            queue_id=new_queue_id(), received_at=now, listener="-", client_ip="127.0.0.1",
            client_name=None, helo=self.settings.hostname, auth_user=None,
            # Null sender: a notice that cannot be delivered must not bounce back into a loop.
            sender="",
            recipients=(RecipientRecord(address=self.settings.notify,
                                        status=RecipientStatus.QUEUED, rule=NOTICE_RULE,
                                        reason=f"{len(entries)} badmail message(s)"),),
        )
        await self.store.enqueue(env, spool)
        spool.discard()
        self.mail_log.event(MailEvent.QUEUED, at=env.received_at, id=env.queue_id,
                            listener="-", sender="<>",
                            to=self.settings.notify, reason="badmail notice",
                            count=len(entries))
        self._wake()

    async def notify_admin(self, subject: str, lines: list[str], reason: str) -> bool:
        """An admin notice other than badmail's (a revoked OAuth refresh token): to
        badmail.notify, from the null sender, like the badmail summary. False: nobody to
        tell (no badmail.notify)."""
        notify = self.settings.notify
        if notify is None:
            return False
        from email.utils import formatdate, make_msgid

        now = self._clock()
        s = self.settings
        headers = [
            f"From: relaywarden <{s.postmaster or f'postmaster@{s.hostname}'}>",
            f"To: <{notify}>", f"Subject: [relaywarden] {subject}",
            f"Date: {formatdate(now, localtime=True)}",
            f"Message-ID: {make_msgid(domain=s.hostname)}", "Auto-Submitted: auto-generated",
            "MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: 8bit"]
        spool = self.store.new_spool()
        spool.write(("\r\n".join(headers) + "\r\n\r\n" + "\r\n".join(lines) + "\r\n").encode())
        env = Envelope(
            queue_id=new_queue_id(), received_at=now, listener="-", client_ip="127.0.0.1",
            client_name=None, helo=s.hostname, auth_user=None, sender="",
            recipients=(RecipientRecord(address=notify, status=RecipientStatus.QUEUED,
                                        rule=NOTICE_RULE, reason=reason),))
        await self.store.enqueue(env, spool)
        spool.discard()
        self.mail_log.event(MailEvent.QUEUED, at=env.received_at, id=env.queue_id, listener="-",
                            sender="<>", to=s.notify, reason=reason)
        self._wake()
        return True

    def _run_command(self, path: Path, entry: dict) -> None:
        if not self.settings.command:
            return
        values = {"path": str(path), "id": entry["id"], "reason": entry["reason"]}
        # One pass: a reason that itself contains "{id}" is not expanded again.
        argv = [_PLACEHOLDER.sub(lambda m: values[m.group(1)], a) for a in self.settings.command]
        task = asyncio.get_running_loop().create_task(self._command(argv, entry["id"]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _command(self, argv: list[str], queue_id: str) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE)
            try:
                _, err = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
                self.mail_log.event(MailEvent.BADMAIL, id=queue_id, command=argv[0],
                                    error="timed out")
                return
            if proc.returncode != 0:
                self.mail_log.event(MailEvent.BADMAIL, id=queue_id, command=argv[0],
                                    status=proc.returncode, error=err.decode(errors="replace")[:200])
        except OSError as exc:
            self.mail_log.event(MailEvent.BADMAIL, id=queue_id, command=argv[0], error=str(exc))
