"""`relaywarden track`: find messages in the history and print their timelines.

"Did the scanner's mail to the auditor get out, and what did the other side say?" is
`relaywarden track --from scan@example.com --to auditor@example.net --since 1d`.
"""

from __future__ import annotations

import json
import sys
import time

import click

from relaywarden.history import STATUSES, HistoryError, parse_since


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}"


def describe(event: dict) -> str:
    """One timeline event as a line of text."""
    d = event["data"]
    kind = event["kind"]
    if kind == "received":
        client = d.get("client_ip") or "-"
        if d.get("client_name"):
            client = f"{d['client_name']} [{client}]"
        parts = [f"received from {client} helo={d.get('helo') or '-'}",
                 f"listener={d.get('listener') or '-'}"]
        if d.get("tls"):
            parts.append(f"tls={d['tls']}")
        if d.get("auth_user"):
            parts.append(f"user={d['auth_user']}")
        parts.append(f"size={d.get('size', 0)}")
        for address, status, rule, reason in d.get("recipients") or []:
            parts.append(f"\n      to <{address}> {status} by {rule}" + (f": {reason}" if reason else ""))
        return " ".join(parts)
    if kind == "attempt":
        text = f"{d.get('outcome')} <{d.get('to')}>"
        if d.get("remote"):
            text += f" via {d['remote']}"
        if d.get("tls"):
            text += f" tls={d['tls']}"
        if d.get("reply"):
            text += f": {d['reply']}"
        if d.get("remote_id"):
            text += f" (their id {d['remote_id']})"
        if d.get("dsn_id"):
            text += f" [DSN {d['dsn_id']}]"
        if d.get("next_attempt"):
            text += f" next {time.strftime('%H:%M:%S', time.gmtime(d['next_attempt']))}"
        return text
    if kind == "admin":
        text = f"{d.get('action')} by {d.get('by') or 'unknown'}"
        if d.get("recipients") and d["recipients"] != ["-"]:
            text += f": {', '.join(d['recipients'])}"
        if d.get("dsn_id"):
            text += f" [DSN {d['dsn_id']}]"
        return text
    return f"{kind} {json.dumps(d)}"


@click.command("track")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML config file (default: the embedded default config)")
@click.option("--from", "sender", help="sender: an address, a domain, or <> for bounces")
@click.option("--to", "recipient", help="recipient: an address or a domain")
@click.option("--message-id", help="the Message-ID header (with or without <>)")
@click.option("--id", "queue_id", help="relaywarden's queue id")
@click.option("--client", help="the sending client's IP address")
@click.option("--status", type=click.Choice(STATUSES), help="the message's state now")
@click.option("--since", help="arrived since: 2h, 30m, 7d, an ISO date, epoch seconds")
@click.option("--until", help="arrived before (same forms as --since)")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="at most this many messages, newest first")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def track(config_path, sender, recipient, message_id, queue_id, client, status, since, until,
          limit, as_json) -> None:
    """Find messages in the history and print each one's timeline: arrival, every attempt
    with the next hop's reply, admin actions and the outcome."""
    from relaywarden.admin.configfile import load_config_or_exit
    from relaywarden.history import History

    cfg = load_config_or_exit(config_path)
    times: dict[str, float] = {}
    for name, text in (("since", since), ("until", until)):
        if text is not None:
            try:
                times[name] = parse_since(text)
            except ValueError as exc:
                raise click.UsageError(f"--{name}: {exc}") from None
    try:
        history = History.open(cfg.data_dir, readonly=True)
    except FileNotFoundError as exc:
        click.echo(f"relaywarden: {exc} (the admin process of a running relay writes it)",
                   err=True)
        sys.exit(1)
    try:
        items, _ = history.search(sender=sender, recipient=recipient, message_id=message_id,
                                  queue_id=queue_id, client=client, status=status,
                                  limit=limit, since=times.get("since"), until=times.get("until"))
        timelines = [history.timeline(item["queue_id"]) for item in items]
    except HistoryError as exc:
        raise click.UsageError(f"--{exc.field.replace('_', '-')}: {exc}") from None
    finally:
        history.close()
    found = [t for t in timelines if t is not None]
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo("no message matches")
        return
    for t in found:
        click.echo(f"{t['queue_id']}  {_when(t['received_at'])}  <{t['sender']}>  "
                   f"{t['status']}  {t['size']} bytes")
        if t.get("subject") is not None or t.get("message_id") is not None:
            click.echo(f"  subject: {t.get('subject') or '-'}  message-id: <{t.get('message_id') or '-'}>")
        for r in t["recipients"]:
            click.echo(f"  to <{r['address']}>: {r['status']}"
                       + (f" - {r['last_reply']}" if r["last_reply"] else ""))
        for e in t["events"]:
            click.echo(f"  {_when(e['at'])}  {describe(e)}")
        click.echo("")
