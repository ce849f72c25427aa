"""The `relaywarden` command.

Exit codes: 0 ok, 1 runtime failure (cannot listen, not found), 2 bad config or usage.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from relaywarden import __version__
# The --config rule lives in its own module so that the subcommands' modules (track,
# accounts, oauth) can use it without importing this one, which imports them.
from relaywarden.admin.configfile import CONFIG_HELP, DEFAULT_CONFIG, config_file  # noqa: F401
from relaywarden.admin.configfile import load_config_or_exit as _load

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="relaywarden")
def main() -> None:
    """relaywarden: an SMTP relay gateway."""


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
def serve(config_path: str | None) -> None:
    """Run the relay: the listeners in this process, delivery and the admin part (history,
    metrics, console) in two processes it starts and stops."""
    from relaywarden.app import run

    cfg = _load(config_path)
    sys.exit(run(cfg, config_file(config_path)))


@main.command("delivery-worker", hidden=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--wake-fd", type=int, required=True)
def delivery_worker(config_path: str | None, wake_fd: int) -> None:
    """The delivery process that `serve` starts (delivery.process = "separate")."""
    from relaywarden.app import run_worker
    from relaywarden.delivery import drop

    drop.CHECK_FOLDER = False   # checked by `serve`; gone since, it defers (delivery/drop.py)
    cfg = _load(config_path)
    sys.exit(run_worker(cfg, config_file(config_path), wake_fd))


@main.command("admin-worker", hidden=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--lifeline-fd", type=int, required=True)
def admin_worker(config_path: str | None, lifeline_fd: int) -> None:
    """The admin process that `serve` starts: history indexer, metrics sampler, HTTP server."""
    from relaywarden.admin.worker import run_admin
    from relaywarden.delivery import drop

    drop.CHECK_FOLDER = False   # checked by `serve` (delivery/drop.py)
    cfg = _load(config_path)
    sys.exit(run_admin(cfg, config_file(config_path), lifeline_fd))


@main.group()
def config() -> None:
    """Check configuration files."""


@config.command("check")
@click.argument("path", type=click.Path(dir_okay=False), required=False)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
def config_check(path: str | None, config_path: str | None) -> None:
    """Validate a config (PATH or --config, as every other command takes it); every mistake
    is printed as `file: dotted.key: what is wrong`."""
    if path and config_path and path != config_path:
        raise click.UsageError("give the config once: PATH or --config")
    path = path or config_path
    cfg = _load(path)
    path = str(config_file(path) or cfg.source)
    names = ", ".join(f"{n} ({lc.address}:{lc.port})" for n, lc in cfg.listeners.items())
    click.echo(f"{path}: ok; listeners: {names}")


@main.group("import")
def import_() -> None:
    """Turn another mail server's configuration into a relaywarden config."""


@import_.command("iis")
@click.argument("source", type=click.Path(dir_okay=False))
@click.option("--virtual-server", "number", type=int, default=None,
              help="the SMTP virtual server N (/LM/SmtpSvc/N); needed when there are several")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="write the config here and the report beside it (OUTPUT.report.txt); "
                   "default: the config on stdout, the report on stderr")
@click.option("--force", is_flag=True, help="overwrite OUTPUT if it exists")
def import_iis(source: str, number: int | None, output: str | None, force: bool) -> None:
    """Import an IIS 6 SMTP virtual server: SOURCE is MetaBase.xml or the JSON that
    scripts/export-iis-smtp.ps1 writes. The result is a commented config and a report of
    every IIS setting found: the config key it became, or why it was not mapped."""
    from relaywarden.importer.iis import IisImportError, convert, load, render_report

    try:
        server = load(Path(source), number)
        toml_text, plan = convert(server)
    except IisImportError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if output is None:
        click.echo(toml_text, nl=False)
        click.echo(render_report(server, plan, "stdout"), err=True, nl=False)
        return
    target = Path(output)
    report_path = target.with_name(target.name + ".report.txt")
    if target.exists() and not force:
        click.echo(f"error: {output} exists; give --force to overwrite it", err=True)
        sys.exit(2)
    try:
        target.write_text(toml_text, encoding="utf-8")
        report = render_report(server, plan, str(target))
        report_path.write_text(report, encoding="utf-8")
    except OSError as exc:
        click.echo(f"error: cannot write {exc.filename}: {exc.strerror}", err=True)
        sys.exit(1)
    click.echo(report, nl=False)
    click.echo(f"wrote {target} and {report_path}; next: relaywarden config check {target}")


@main.group()
def policy() -> None:
    """Ask the relay policy questions."""


#: What opens a refused step, worded for the command line.
EXPLAIN_HINTS = {"tls": "give --tls to see what happens after STARTTLS",
                 "user": "give --user NAME to see what happens after AUTH",
                 "name": "give --name HOST, the client's verified host name, to see what "
                         "happens then"}


@policy.command("explain")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--listener", required=True, help="listener name")
@click.option("--client", required=True, help="client IP address")
@click.option("--name", "verified_name", help="the client's verified reverse-DNS name, if any")
@click.option("--user", help="the client logs in (SMTP AUTH) as this user")
@click.option("--tls", is_flag=True,
              help="the client uses STARTTLS (implicit-TLS listeners always have TLS)")
@click.option("--from", "sender", required=True, help="MAIL FROM address ('<>' or '' for null)")
@click.option("--to", "recipient", required=True, help="RCPT TO address")
def policy_explain(config_path, listener, client, verified_name, user, tls, sender, recipient) -> None:
    """Print what the relay answers one client, sender and recipient, step by step (connect,
    AUTH when --user is given, the listener's TLS and AUTH gates and the sender rules, the
    recipient rules), and the rule that made each answer."""
    from relaywarden.admin.explain import ExplainError, explain
    from relaywarden.policy.gates import Need

    cfg = _load(config_path)
    try:
        explanation = explain(cfg, listener=listener, client=client, name=verified_name,
                              user=user, tls=tls, sender=sender, recipient=recipient)
    except ExplainError as exc:
        option = {"from": "--from", "to": "--to", "client": "--client", "tls": "--tls"}.get(exc.field)
        raise click.UsageError(f"{option}: {exc.message}" if option else exc.message) from None
    click.echo(explanation.render({need: EXPLAIN_HINTS[need.value] for need in Need}))


@main.group()
def queue() -> None:
    """Look at and act on the queue of a running (or stopped) relay."""


def _reader(config_path):
    from relaywarden.queue.store import QueueReader

    cfg = _load(config_path)
    try:
        return QueueReader(cfg.data_dir)
    except FileNotFoundError as exc:
        click.echo(f"relaywarden: {exc}", err=True)
        sys.exit(1)


@queue.command("list")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--status", type=click.Choice(["queued", "held", "badmail"]),
              help="only messages with a recipient in this state (held: by a hold route, "
                   "the admin, or a missing body file)")
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True,
              help="at most this many messages, oldest first")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def queue_list(config_path, status, limit, as_json) -> None:
    """List messages with their recipients and each recipient's state."""
    reader = _reader(config_path)
    rows = reader.list(status=status, limit=limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("queue is empty")
        return
    click.echo(f"{'ID':<20} {'RECEIVED (UTC)':<19} {'SIZE':>8}  SENDER -> RECIPIENT [STATE]")
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["received_at"]))
        sender = row["sender"] or "<>"
        first = True
        for r in row["recipients"]:
            lead = f"{row['id']:<20} {when:<19} {row['size']:>8}  {sender}" if first else " " * 51
            click.echo(f"{lead} -> {r['address']} [{r['status']}]")
            first = False


def _date(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


@queue.command("show")
@click.argument("queue_id")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--body", is_flag=True, help="also print the message as stored")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def queue_show(queue_id, config_path, body, as_json) -> None:
    """Show one message's envelope, recipients and (with --body) content."""
    reader = _reader(config_path)
    msg = reader.show(queue_id)
    if msg is None:
        click.echo(f"relaywarden: no message {queue_id}", err=True)
        sys.exit(1)
    if body:
        msg["body"] = (reader.body(queue_id) or b"").decode("utf-8", "replace")
    if as_json:
        click.echo(json.dumps(msg, indent=2))
        return
    for key, value in msg.items():
        if key in ("recipients", "body"):
            continue
        if key == "received_at":
            value = _date(value)           # as `queue list` shows it, not epoch seconds
        elif key == "sender" and value == "":
            value = "<>"                   # the null reverse-path (RFC 5321 4.5.5)
        click.echo(f"{key + ':':<13} {value if value is not None else '-'}")
    for r in msg["recipients"]:
        held_by = r.pop("held_by")
        # Who holds it: the route (waits for ETRN), the admin, or a missing body file.
        status = f"held by {held_by}" if r["status"] == "held" and held_by else r["status"]
        click.echo(f"recipient:    {r['address']} [{status}] rule={r['rule']}"
                   + (f" reason={r['reason']}" if r["reason"] else ""))
        if r["attempts"] or r["last_error"]:
            # Why it is still here, and when it is tried next (like Postfix's mailq).
            due = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r["next_attempt"]))
            click.echo(f"              attempts={r['attempts']}"
                       + (f" next={due}" if r["status"] == "queued" else "")
                       + (f" last_error={r['last_error']}" if r["last_error"] else "")
                       + (f" relay={r['remote_mta']}" if r["remote_mta"] else ""))
    if body:
        click.echo("")
        click.echo(msg["body"])


def _admin(config_path):
    from relaywarden.queue.admin import QueueAdmin

    cfg = _load(config_path)
    try:
        return cfg, QueueAdmin(cfg.data_dir)
    except FileNotFoundError as exc:
        click.echo(f"relaywarden: {exc}", err=True)
        sys.exit(1)


def _need(admin, queue_id: str) -> None:
    from relaywarden.queue.admin import OnFirstAttempt

    try:
        found = admin.exists(queue_id)
    except OnFirstAttempt as exc:
        click.echo(f"relaywarden: {exc}", err=True)
        sys.exit(75)     # EX_TEMPFAIL (sysexits.h): the same command works a moment later
    if not found:
        click.echo(f"relaywarden: no message {queue_id}", err=True)
        sys.exit(1)


def _audit(cfg, event: str, **fields) -> None:
    """Admin actions go to the mail log too, with who did them."""
    from relaywarden.logs.maillog import MailEvent, MailLog
    from relaywarden.logs.files import RotatingFile, Rotation

    if not cfg.log.mail:
        return
    log = MailLog(RotatingFile(cfg.log_dir, prefix="mail", suffix=".log",
                               rotation=Rotation(cfg.log.rotate), max_size=cfg.log.max_size,
                               keep=cfg.log.keep))
    log.event(MailEvent(event), **fields)
    log.close()


def _who() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name: still record the action
        return "unknown"


@queue.command("flush")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--domain", help="only this recipient domain; also lets its held mail go")
def queue_flush(config_path, domain) -> None:
    """Make queued mail due now."""
    cfg, admin = _admin(config_path)
    n = admin.flush(domain=domain, by=_who())
    _audit(cfg, "flush", domain=domain, recipients=n, by=_who())
    click.echo(f"{n} recipient(s) due now")
    _say_leased(admin.leased(domain=domain))


def _say_leased(leased: list[tuple[str, str, float]]) -> None:
    """Recipients an attempt under way holds: a flush or retry cannot start them again
    before that attempt ends (the scheduler renews the lease while it lasts)."""
    for queue_id, address, until in leased:
        click.echo(f"{queue_id}: {address}: leased by a live attempt until "
                   f"{time.strftime('%H:%M:%S', time.gmtime(until))} UTC; its outcome decides"
                   " the next attempt")


_ONE_HELP = {
    "retry": "Try a deferred message again now.",
    "hold": "Hold a message: no attempts until it is released.",
    "release": "Release a held message (also one held by its route).",
    "delete": "Delete a message from the queue, without a bounce.",
}


def _one(name: str, method: str, verb: str):
    # help= here: click reads the help text when the command is made, not from a
    # docstring set afterwards (these commands had none).
    @queue.command(name, help=_ONE_HELP[name])
    @click.argument("queue_id")
    @click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
    def command(queue_id, config_path) -> None:
        cfg, admin = _admin(config_path)
        _need(admin, queue_id)
        n = getattr(admin, method)(queue_id, by=_who())
        _audit(cfg, name, id=queue_id, recipients=n, by=_who())
        click.echo(f"{queue_id}: {n} recipient(s) {verb}")
        if name == "retry":
            _say_leased(admin.leased(queue_id=queue_id))
    return command


_one("retry", "retry", "due now")
_one("hold", "hold", "held")
_one("release", "release", "released")
_one("delete", "delete", "deleted")


@main.group()
def badmail() -> None:
    """Quarantined messages: list, show, release, delete."""


@badmail.command("list")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def badmail_list(config_path, as_json) -> None:
    """Messages with quarantined recipients, oldest first."""
    reader = _reader(config_path)
    rows = reader.list(status="badmail")
    for row in rows:
        row["recipients"] = [r for r in row["recipients"] if r["status"] == "badmail"]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("badmail is empty")
        return
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["received_at"]))
        for r in row["recipients"]:
            click.echo(f"{row['id']}  {when}  <{row['sender']}> -> <{r['address']}>  "
                       f"{r['rule']}: {r['reason']}")


@badmail.command("show")
@click.argument("queue_id")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.pass_context
def badmail_show(ctx, queue_id, config_path) -> None:
    """Show a quarantined message with its reasons and content."""
    ctx.invoke(queue_show, queue_id=queue_id, config_path=config_path, body=True, as_json=False)


@badmail.command("release")
@click.argument("queue_id")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--by", "by", help="who releases it (default: your user name); logged")
def badmail_release(queue_id, config_path, by) -> None:
    """Send it on as if the policy had allowed it."""
    cfg, admin = _admin(config_path)
    _need(admin, queue_id)
    who = by or _who()
    released = admin.badmail_release(queue_id, by=who)
    if not released:
        click.echo(f"relaywarden: {queue_id} has no recipient in badmail", err=True)
        sys.exit(1)
    _audit(cfg, "badmail-release", id=queue_id, to=",".join(released), by=who)
    click.echo(f"{queue_id}: released {', '.join(released)} (by {who})")


@badmail.command("delete")
@click.argument("queue_id")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
def badmail_delete(queue_id, config_path) -> None:
    """Delete a quarantined message (its badmail recipients) and its files."""
    cfg, admin = _admin(config_path)
    _need(admin, queue_id)
    deleted = admin.badmail_delete(queue_id, by=_who())
    if not deleted:
        click.echo(f"relaywarden: {queue_id} has no recipient in badmail", err=True)
        sys.exit(1)
    for suffix in (".eml", ".json"):
        (cfg.badmail.dir / f"{queue_id}{suffix}").unlink(missing_ok=True)
    _audit(cfg, "badmail-delete", id=queue_id, to=",".join(deleted), by=_who())
    click.echo(f"{queue_id}: deleted {', '.join(deleted)}")
from relaywarden.admin.users import user  # noqa: E402
main.add_command(user)
from relaywarden.admin.track import track  # noqa: E402
main.add_command(track)
from relaywarden.admin.accounts import admin_user  # noqa: E402
main.add_command(admin_user)
from relaywarden.oauth.cli import oauth  # noqa: E402
main.add_command(oauth)
