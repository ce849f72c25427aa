"""The admin process (`relaywarden admin-worker`, started by `serve`): on one asyncio loop
the history indexer, the metrics sampler and, with ``[admin] enabled = true``, the HTTP
server (uvicorn + Starlette). It stops when the receiving process's lifeline pipe closes
(even after kill -9 of that process), on SIGTERM, and reloads its config on SIGHUP.

It is a process of its own so that nothing it does (a slow page, a history search) can
delay SMTP: the receiving and delivery processes never wait on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from relaywarden import collector
from relaywarden.config.load import ConfigError, load_config
from relaywarden.config.schema import Config

#: How long open HTTP connections (a live log view) get to finish when stopping.
GRACEFUL_SECONDS = 2


def _note(text: str) -> None:
    print(f"relaywarden: admin: {text}", file=sys.stderr, flush=True)


def _optional(module: str, name: str):
    """A part another module provides, or None (with a note) when it is not there yet."""
    try:
        mod = __import__(module, fromlist=[name])
        return getattr(mod, name)
    except (ImportError, AttributeError) as exc:
        _note(f"{module}.{name} is not available ({exc}); skipped")
        return None


def _has_users(accounts) -> bool:
    try:
        return bool(accounts.list())
    except Exception:  # noqa: BLE001 - an unreadable file is reported at login
        return True


def _listen(cfg: Config) -> socket.socket:
    address = cfg.admin.address
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((str(address), cfg.admin.port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _http_server(cfg: Config, config_path: Path | None):
    import uvicorn

    from relaywarden.admin.server import AdminState, create_app

    class Server(uvicorn.Server):
        # The admin process's own signal handlers decide; uvicorn must not take them.
        @contextlib.contextmanager
        def capture_signals(self):
            yield

    state = AdminState(cfg=cfg, config_path=config_path)
    app = create_app(cfg, config_path, state=state)
    ssl: dict[str, Any] = {}
    if cfg.admin.tls:
        ssl = {"ssl_certfile": str(cfg.admin.cert_file), "ssl_keyfile": str(cfg.admin.key_file)}
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False,
                            proxy_headers=False, server_header=False,
                            timeout_graceful_shutdown=GRACEFUL_SECONDS, **ssl)
    return Server(config), state


async def admin_main(cfg: Config, config_path: Path | None, lifeline_fd: int) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    tasks: list[asyncio.Task] = []
    server = state = None

    def lifeline() -> None:
        try:
            data = os.read(lifeline_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            stop.set()          # the receiving process is gone

    def reload() -> None:
        try:
            new = load_config(config_path)
        except ConfigError:
            return              # the receiving process reports it
        if state is not None:
            state.configure(new)

    os.set_blocking(lifeline_fd, False)
    loop.add_reader(lifeline_fd, lifeline)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)    # the parent decides (Ctrl-C)
    loop.add_signal_handler(signal.SIGHUP, reload)

    setup = _optional("relaywarden.metrics", "setup")
    if setup is not None:
        try:
            setup(cfg.data_dir, role="admin")
        except Exception as exc:  # noqa: BLE001 - metrics must not stop the console
            _note(f"metrics setup: {exc!r}")
    if cfg.history.enabled:
        run_indexer = _optional("relaywarden.history.indexer", "run_indexer")
        if run_indexer is not None:
            tasks.append(loop.create_task(run_indexer(cfg, stop), name="history"))
    else:
        # Nobody reads the queue's journal: it is emptied, so the queue does not grow.
        from relaywarden.history.indexer import run_trimmer
        tasks.append(loop.create_task(run_trimmer(cfg, stop), name="journal"))
    run_sampler = _optional("relaywarden.metrics", "run_sampler")
    if run_sampler is not None:
        tasks.append(loop.create_task(run_sampler(cfg, stop), name="metrics"))
    if cfg.admin.enabled:
        try:
            sock = _listen(cfg)
        except OSError as exc:
            _note(f"cannot listen on {cfg.admin.address}:{cfg.admin.port}: {exc}")
        else:
            server, state = _http_server(cfg, config_path)
            tasks.append(loop.create_task(server.serve(sockets=[sock]), name="http"))
            scheme = "https" if cfg.admin.tls else "http"
            host = f"[{cfg.admin.address}]" if cfg.admin.address.version == 6 else str(cfg.admin.address)
            _note(f"console on {scheme}://{host}:{cfg.admin.port}/")
            if not state.accounts or not _has_users(state.accounts):
                roles = cfg.admin.ldap_roles
                if not (cfg.auth.ldap and (roles.admin or roles.operator or roles.viewer)):
                    where = f" --config {config_path}" if config_path else ""
                    _note(f"nobody can log in yet: relaywarden admin-user add NAME --role admin{where}")

    async def watch(task: asyncio.Task) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await task
            except BaseException as exc:  # noqa: BLE001 - one part failing must not stop the others
                if not stop.is_set():
                    _note(f"{task.get_name()} stopped: {exc!r}")

    watchers = [loop.create_task(watch(t)) for t in tasks]
    await stop.wait()
    loop.remove_reader(lifeline_fd)
    if state is not None:
        state.stopping.set()
        await asyncio.sleep(0.6)      # event streams see it and end
    if server is not None:
        server.should_exit = True
    done, pending = await asyncio.wait(tasks, timeout=GRACEFUL_SECONDS + 3) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
    if state is not None and state.mail_log is not None:
        state.mail_log.close()
    return 0


#: The admin process yields the CPU to the SMTP processes when both want it: indexing the
#: history may lag a burst by seconds (it catches up after), a message may not wait.
NICENESS = 10


def run_admin(cfg: Config, config_path: Path | None, lifeline_fd: int) -> int:
    try:
        os.nice(NICENESS)
    except OSError:
        pass
    collector.tune()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(admin_main(cfg, config_path, lifeline_fd))
    return uvloop.run(admin_main(cfg, config_path, lifeline_fd))
