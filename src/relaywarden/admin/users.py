"""`relaywarden user add|passwd|groups|remove|list`: the local AUTH users file.

Passwords are read from the terminal (asked twice, not echoed) or, with
``--password-stdin``, from the first line of standard input (for scripts; never put a
password on the command line, where `ps` and shell history see it).

Exit codes: 0 ok, 1 no such user / user exists / file trouble, 2 bad usage.
"""

from __future__ import annotations

import json
import sys

import click

from relaywarden.auth.users import UserExists, UserFile, UserFileError, UserNotFound, check_group, check_name

FILE_HELP = "the users file (name:argon2id-hash[:groups] lines)"


def _file_option(f):
    return click.option("--file", "path", required=True, type=click.Path(dir_okay=False),
                         help=FILE_HELP)(f)


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"relaywarden: {message}", err=True)
    sys.exit(code)


def _name(name: str) -> str:
    try:
        return check_name(name)
    except UserFileError as exc:
        raise click.UsageError(f"NAME: {exc}") from None


def _groups(text: str | None) -> list[str]:
    groups = [g.strip() for g in (text or "").split(",") if g.strip()]
    try:
        for g in groups:
            check_group(g)
    except UserFileError as exc:
        raise click.UsageError(f"--groups: {exc}") from None
    return groups


def _password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password[:-1] if password.endswith("\r") else password
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise click.UsageError("the password is empty")
    return password


@click.group("user")
def user() -> None:
    """Local AUTH users: add, change passwords, remove, list."""


@user.command("add")
@click.argument("name")
@_file_option
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
@click.option("--groups", help="comma-separated groups, e.g. scanners,apps")
def user_add(name, path, password_stdin, groups) -> None:
    """Add user NAME (asks for the password)."""
    name = _name(name)
    group_list = _groups(groups)
    users = UserFile(path)
    existing = users.get(name)      # what `name in users` looks up
    if existing is not None:
        _fail(f"user {existing.name} already exists in {path}")
    password = _password(password_stdin)
    try:
        entry = users.add(name, password, groups=group_list)
    except UserExists as exc:
        _fail(str(exc))
    except UserFileError as exc:
        _fail(f"{path}: {exc}")
    click.echo(f"added {entry.name}" + (f" (groups: {','.join(entry.groups)})" if entry.groups else ""))


@user.command("passwd")
@click.argument("name")
@_file_option
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
def user_passwd(name, path, password_stdin) -> None:
    """Set a new password for NAME."""
    users = UserFile(path)
    if name not in users:
        _fail(f"no such user: {name}")
    password = _password(password_stdin)
    try:
        entry = users.set_password(name, password)
    except UserNotFound:
        _fail(f"no such user: {name}")
    except UserFileError as exc:
        _fail(f"{path}: {exc}")
    click.echo(f"password of {entry.name} changed")


@user.command("groups")
@click.argument("name")
@click.argument("groups")
@_file_option
def user_groups(name, groups, path) -> None:
    """Set the groups of NAME (comma-separated; "" for none)."""
    group_list = _groups(groups)
    try:
        entry = UserFile(path).set_groups(name, group_list)
    except UserNotFound:
        _fail(f"no such user: {name}")
    except UserFileError as exc:
        _fail(f"{path}: {exc}")
    click.echo(f"groups of {entry.name}: {','.join(entry.groups) or '-'}")


@user.command("remove")
@click.argument("name")
@_file_option
def user_remove(name, path) -> None:
    """Remove user NAME."""
    try:
        entry = UserFile(path).remove(name)
    except UserNotFound:
        _fail(f"no such user: {name}")
    except UserFileError as exc:
        _fail(f"{path}: {exc}")
    click.echo(f"removed {entry.name}")


@user.command("list")
@_file_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def user_list(path, as_json) -> None:
    """List the users and their groups (never the hashes)."""
    users = UserFile(path)
    try:
        entries = users.list()
    except UserFileError as exc:
        _fail(str(exc))
    for problem in users.problems:
        click.echo(f"warning: {problem}", err=True)
    if as_json:
        click.echo(json.dumps([{"name": e.name, "groups": list(e.groups)} for e in entries], indent=2))
        return
    if not entries:
        click.echo("no users")
        return
    for e in entries:
        click.echo(f"{e.name}" + (f"  groups: {','.join(e.groups)}" if e.groups else ""))
