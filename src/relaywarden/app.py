"""Builds the parts from the config and runs them: listeners, queue, logs; signals and drain.

No business logic lives here (docs/architecture.md): this file only wires.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import resource
import signal
import socket
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from relaywarden.config.build import (
    build_auth,
    build_badmail_settings,
    build_cram,
    build_delivery_settings,
    build_listener_contexts,
    build_logs,
    build_oauth_providers,
    build_outbound_log,
    build_policy,
    build_recipient_throttle,
    build_resolver,
    build_router,
    build_screener,
    build_ssl_contexts,
    build_validator,
)
from relaywarden.config.load import ConfigError, load_config
from relaywarden.config.reload import changes as reload_changes
from relaywarden.config.schema import Config
from relaywarden.logs.maillog import MailEvent, MailLog
from relaywarden import collector, metrics
from relaywarden.logs.protocol import ProtocolLog
from relaywarden.delivery.badmail import Badmail
from relaywarden.delivery.engine import Engine
from relaywarden.queue.fileops import REAL, FileOps
from relaywarden.queue.store import Store
from relaywarden.policy.limits import FreeSpaceGuard
from relaywarden.server.context import ListenerRuntime, Services
from relaywarden.server.session import SmtpSession
from relaywarden.server.tls import CertificateError, ImplicitTls

if TYPE_CHECKING:
    from relaywarden.server.pickup import Pickup

#: How long a stopping relay lets sessions finish a transaction before it closes them.
DRAIN_SECONDS = 10.0
#: How often buffered log lines are written out.
LOG_FLUSH_SECONDS = 1.0


def implicit_tls_context(runtime: ListenerRuntime) -> ssl.SSLContext:
    """The context an implicit-TLS server is created with (RFC 8314: TLS from the first
    byte). It is the listener's context at start; each handshake switches to the one of the
    last SIGHUP from OpenSSL's server-name callback, which runs for every ClientHello (with
    or without SNI), so new connections get a reloaded certificate without a restart."""
    front = runtime.ssl_context
    assert front is not None

    def current(ssl_object, server_name, context) -> None:
        latest = runtime.ssl_context
        if latest is not None and latest is not context:
            ssl_object.context = latest

    front.sni_callback = current
    return front


def free_space(path: Path):
    """Free bytes for an unprivileged writer in ``path`` (the disk guard's reading)."""
    def read() -> int:
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize
    return read


def atrn_engine(cfg: Config, store: Store, mail_log: MailLog,
                protocol_log: ProtocolLog | None = None) -> Engine | None:
    """The receiving process's own delivery engine for ATRN sessions (RFC 2645): never
    started (no scheduler), it only sends what a session claimed over the client's
    connection and records the outcomes. None when no route has atrn_users."""
    if not any(route.atrn_users for route in cfg.routes.values()):
        return None
    return Engine(store=store, router=build_router(cfg), resolver=build_resolver(cfg),
                  settings=build_delivery_settings(cfg), mail_log=mail_log, protocol_log=protocol_log)


_log_errors: set[str] = set()


def _flush_log(log, process: str) -> None:
    """Write out buffered log lines. A log that cannot be written (a full disk) keeps its
    lines for the next flush: the flusher must go on, or every later line is lost too."""
    try:
        log.flush()
    except OSError as exc:
        if process not in _log_errors:     # once, not every second
            _log_errors.add(process)
            print(f"relaywarden: {process}: cannot write the logs: {exc}", file=sys.stderr,
                  flush=True)
    else:
        _log_errors.discard(process)


def _flush_marker(data_dir: Path, process: str, count: int, note: str = "") -> None:
    """SIGUSR1 (flush the logs now): say it is done in data_dir/run/log-flush.PROCESS, a
    count of the flushes, so a test or a script can wait for the lines instead of sleeping
    through the once-a-second flush."""
    run = data_dir / "run"
    run.mkdir(exist_ok=True)
    tmp = run / f".log-flush.{process}"
    tmp.write_text(f"{count}{note}\n")
    tmp.replace(run / f"log-flush.{process}")


class DeliveryWorker:
    """The send half: the scheduler with its outbound connections, and the badmail sweeper.
    Runs inside the relay process ("inline") or alone in a child process ("separate")."""

    def __init__(self, cfg: Config, *, store: Store, mail_log: MailLog,
                 protocol_log: ProtocolLog | None = None) -> None:
        self.engine = Engine(store=store, router=build_router(cfg), resolver=build_resolver(cfg),
                             settings=build_delivery_settings(cfg), mail_log=mail_log,
                             protocol_log=protocol_log)
        self.badmail = Badmail(store=store, settings=build_badmail_settings(cfg), mail_log=mail_log,
                               wake=self.engine.wake)
        self._task: asyncio.Task | None = None
        self._providers = build_oauth_providers(cfg)

    def wake(self) -> None:
        self.engine.wake()

    async def start(self) -> None:
        await self.engine.start()
        self._task = asyncio.get_running_loop().create_task(self._badmail_loop())

    async def _badmail_loop(self) -> None:
        while True:
            try:
                await self.badmail.sweep()
            except Exception as exc:  # noqa: BLE001 - a full disk must not stop the relay
                print(f"relaywarden: badmail: {exc}", file=sys.stderr, flush=True)
            try:
                await self._oauth_notices()
            except Exception as exc:  # noqa: BLE001 - as above
                print(f"relaywarden: oauth notice: {exc}", file=sys.stderr, flush=True)
            await asyncio.sleep(1.0)

    async def _oauth_notices(self) -> None:
        """One admin notice per revoked or expired refresh token (issue 12): the provider
        notes the revocation in its token file, this sends it once; mail keeps waiting."""
        for name, provider in self._providers.items():
            if provider.settings.flow != "refresh_token":
                continue
            reason = await asyncio.to_thread(provider.revoked_notice)
            if reason is None:
                continue
            opt = "" if self.badmail.settings.config_path is None else \
                f" --config {self.badmail.settings.config_path}"
            await self.badmail.notify_admin(
                f"oauth.{name}: refresh token no longer valid", [
                    f"The refresh token of oauth.{name} is no longer accepted:", f"    {reason}",
                    "", "Mail routed through it waits in the queue (nothing bounces).",
                    f"Sign in again with: relaywarden oauth login {name}{opt}",
                    "Delivery resumes by itself once that is done.",
                    "This notice is sent once for this revocation."],
                reason=f"oauth notice: oauth.{name}")

    def reload(self, cfg: Config) -> None:
        self._providers = build_oauth_providers(cfg)
        self.engine.resolver = build_resolver(cfg)
        self.engine.router = build_router(cfg)
        self.engine.settings = build_delivery_settings(cfg)
        self.badmail.settings = build_badmail_settings(cfg)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.engine.stop()


class Relay:
    def __init__(self, cfg: Config, *, files: FileOps = REAL) -> None:
        self.cfg = cfg
        self.files = files     # the queue's file operations (a test's failing ones)
        self.started_cfg = cfg     # what needs a restart runs as in this one
        self.services: Services | None = None
        self.servers: list[asyncio.base_events.Server] = []
        self.contexts = build_listener_contexts(cfg)
        self.runtimes = {name: ListenerRuntime() for name in self.contexts}
        for name, context in build_ssl_contexts(cfg).items():
            self.runtimes[name].configure(self.contexts[name], context)
        self._stop = asyncio.Event()
        self._flusher: asyncio.Task | None = None
        self.worker: DeliveryWorker | None = None
        self.child: subprocess.Popen | None = None
        self._wake_fd: int | None = None
        self.admin_child: subprocess.Popen | None = None
        self._admin_fd: int | None = None
        self.outbound_log: ProtocolLog | None = None
        self._poke_pending = False
        self.config_path: Path | None = None
        self.pickup: Pickup | None = None     # the Pickup directory task ([pickup]), issue 16
        self._flushes = 0      # SIGUSR1 flushes done (flush_now)

    @property
    def svc(self) -> Services:
        """The services, once start() has made them."""
        assert self.services is not None
        return self.services

    async def start(self) -> None:
        # Before the delivery and admin processes start: they write to the same directory.
        metrics.setup(self.cfg.data_dir, role="receiving", fresh=True)
        store = Store.open(self.cfg.data_dir, files=self.files)
        spools, orphans = store.recover_files()
        if spools or orphans:
            print(f"relaywarden: removed {spools} unfinished spool file(s) and {orphans} body"
                  " file(s) no queued message names (left by a crash)", file=sys.stderr,
                  flush=True)
        # Messages a crash left in the hand-off log (queue/log.py) go into the index first,
        # whatever delivery.handoff says now.
        recovered = await store.recover_log()
        if recovered:
            print(f"relaywarden: {recovered} message(s) the hand-off log held unfinished are"
                  " queued again (left by a crash)", file=sys.stderr, flush=True)
        if self.cfg.delivery.handoff:
            store.start_handoff(deliver_here=self.cfg.delivery.process == "inline")
        store.in_flow_delay = self.cfg.delivery.in_flow_delay
        loop_time = asyncio.get_running_loop().time
        mail_log, protocol_log = build_logs(self.cfg)
        self.outbound_log = build_outbound_log(self.cfg)
        resolver = build_resolver(self.cfg)
        auth_backend, auth_throttle = build_auth(self.cfg)
        self.services = Services(
            policy=build_policy(self.cfg), store=store, mail_log=mail_log,
            protocol_log=protocol_log, resolver=resolver,
            auth=auth_backend, auth_throttle=auth_throttle,
            disk=FreeSpaceGuard(min_free=self.cfg.relay.min_free_space,
                                free_bytes=free_space(self.cfg.data_dir),
                                clock=loop_time),
            runtimes=self.runtimes,
            router=build_router(self.cfg),
            atrn=atrn_engine(self.cfg, store, mail_log, self.outbound_log),
            screener=build_screener(self.cfg),
            cram=build_cram(self.cfg),
            recipients=build_validator(self.cfg, resolver),
            recipient_throttle=build_recipient_throttle(self.cfg),
        )
        # A marker a delivery process of an earlier run left: SIGUSR1 waits for the new one's.
        (self.cfg.data_dir / "run" / "log-flush.delivery").unlink(missing_ok=True)
        if self.cfg.delivery.process == "inline":
            self.worker = DeliveryWorker(self.cfg, store=store, mail_log=mail_log,
                                         protocol_log=self.outbound_log)
            self.svc.on_queued = self.worker.wake
            store.on_index_scan = self.worker.wake
        else:
            self._start_child()
        self._start_admin()
        loop = asyncio.get_running_loop()
        for name, lc in self.cfg.listeners.items():
            if lc.tls.mode == "implicit":
                factory = self._implicit_tls_factory(name, loop, float(lc.command_timeout))
            else:
                factory = (lambda name=name: SmtpSession(self.contexts[name], self.svc))
            server = await loop.create_server(
                factory, host=str(lc.address), port=lc.port, reuse_address=True, backlog=1024,
                family=socket.AF_INET6 if lc.address.version == 6 else socket.AF_INET,
            )
            self.servers.append(server)
            print(f"relaywarden: listener {name} on {lc.address}:{lc.port}", file=sys.stderr,
                  flush=True)
        if self.worker is not None:
            await self.worker.start()
        # --- Pickup directory (issue 16): kept apart from the rest of the wiring on purpose.
        if self.cfg.pickup is not None:
            from relaywarden.server.pickup import Pickup

            self.pickup = Pickup(self.cfg, self.services)
            self.pickup.start()
        # --- end of the pickup hook
        self._flusher = loop.create_task(self._flush_logs())

    def _implicit_tls_factory(self, name: str, loop: asyncio.AbstractEventLoop,
                              timeout: float):
        """Sessions of an implicit-TLS listener behind a TLS layer that logs failed
        handshakes (the loop's own TLS server would drop them silently)."""
        context = implicit_tls_context(self.runtimes[name])
        mail_log = self.svc.mail_log

        def failed(client: str, reason: str) -> None:
            mail_log.event(MailEvent.REJECT, stage="tls", listener=name, client=client,
                           reason=f"TLS handshake failed: {reason}")

        return lambda: ImplicitTls(loop, SmtpSession(self.contexts[name], self.svc),
                                   context, handshake_timeout=timeout, on_failure=failed)

    def _start_child(self) -> None:
        """The delivery process. A pipe is both its wake-up call (a byte after each queued
        message) and its lifeline: when this process dies, even by kill -9, the pipe closes
        and the child stops (its unfinished attempts are retried at the next start)."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        argv = [sys.executable, "-m", "relaywarden", "delivery-worker", "--wake-fd", str(read_fd)]
        if self.config_path is not None:
            argv += ["--config", str(self.config_path)]
        self.child = subprocess.Popen(argv, pass_fds=(read_fd,))
        os.close(read_fd)
        self._wake_fd = write_fd
        self.svc.on_queued = self._poke

    def _start_admin(self) -> None:
        """The admin process (history indexer, metrics sampler, HTTP console and API). Its
        pipe carries nothing: it is only a lifeline, closed when this process dies."""
        read_fd, write_fd = os.pipe()
        argv = [sys.executable, "-m", "relaywarden", "admin-worker", "--lifeline-fd", str(read_fd)]
        if self.config_path is not None:
            argv += ["--config", str(self.config_path)]
        self.admin_child = subprocess.Popen(argv, pass_fds=(read_fd,))
        os.close(read_fd)
        self._admin_fd = write_fd

    def _poke(self) -> None:
        # Messages that are queued in the same loop round share one wake-up byte.
        if not self._poke_pending:
            self._poke_pending = True
            asyncio.get_running_loop().call_soon(self._send_poke)

    def _send_poke(self) -> None:
        self._poke_pending = False
        assert self._wake_fd is not None       # set with the child
        try:
            os.write(self._wake_fd, b"!")
        except (BlockingIOError, BrokenPipeError):
            pass   # the pipe is full (it wakes anyway) or the child is gone (a restart resumes)

    def flush_now(self) -> None:
        """SIGUSR1: write out the buffered log lines now, here and in the delivery process
        (once it is ready for the signal: it says so with its own marker file)."""
        _flush_log(self.svc.mail_log, "receiving")
        if self.svc.protocol_log is not None:
            _flush_log(self.svc.protocol_log, "receiving")
        if self.outbound_log is not None:
            _flush_log(self.outbound_log, "receiving")
        forwarded = ""
        if (self.child is not None and self.child.poll() is None
                and (self.cfg.data_dir / "run" / "log-flush.delivery").exists()):
            self.child.send_signal(signal.SIGUSR1)
            forwarded = " delivery"
        self._flushes += 1
        _flush_marker(self.cfg.data_dir, "receiving", self._flushes, forwarded)

    async def _flush_logs(self) -> None:
        while True:
            await asyncio.sleep(LOG_FLUSH_SECONDS)
            _flush_log(self.svc.mail_log, "receiving")
            if self.svc.protocol_log is not None:
                _flush_log(self.svc.protocol_log, "receiving")
            if self.outbound_log is not None:
                _flush_log(self.outbound_log, "receiving")

    def reload(self, path: Path | None) -> None:
        """SIGHUP: every setting is applied (new sessions, attempts and connections use it)
        or listed as needing a restart (config.reload has the table), on stdout and in the
        mail log (event=reload). The delivery and admin processes reload too."""
        log = self.svc.mail_log
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            for msg in exc.messages:
                print(f"relaywarden: reload refused: {msg}", file=sys.stderr, flush=True)
            log.event(MailEvent.RELOAD, result="refused", error=exc.messages[0])
            _flush_log(log, "receiving")
            return
        try:
            tls = build_ssl_contexts(cfg)
        except CertificateError as exc:
            print(f"relaywarden: reload refused: {cfg.source}: {exc}", file=sys.stderr, flush=True)
            log.event(MailEvent.RELOAD, result="refused", error=f"{cfg.source}: {exc}")
            _flush_log(log, "receiving")
            return
        # Applied: what differs from the config loaded last. Needs a restart: what differs
        # from the config the relay started with (listed at every reload until the restart).
        applied = reload_changes(self.cfg, cfg).applied
        restart = reload_changes(self.started_cfg, cfg).restart
        self.svc.policy = build_policy(cfg)
        self.svc.router = build_router(cfg)
        self.svc.atrn = atrn_engine(cfg, self.svc.store, self.svc.mail_log,
                                         self.outbound_log)
        self.svc.screener = build_screener(cfg)
        self.svc.cram = build_cram(cfg)
        self.svc.resolver = build_resolver(cfg)
        # A new validator: new files, TTLs and routes (its cache and connections start over).
        self.svc.recipients = build_validator(cfg, self.svc.resolver)
        # New limits; the counts of unknown recipients are kept (a reload must not let a
        # dictionary attack start over).
        fresh = build_recipient_throttle(cfg)
        if self.svc.recipient_throttle is not None:
            fresh._clients = self.svc.recipient_throttle._clients
        self.svc.recipient_throttle = fresh
        # New password checkers (a changed LDAP server, a new users file); the throttle's
        # memory of failures is kept: a reload must not reset a brute-force lockout.
        self.svc.auth = build_auth(cfg)[0]
        if self.worker is not None:
            self.worker.reload(cfg)
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGHUP)
        if self.admin_child is not None and self.admin_child.poll() is None:
            self.admin_child.send_signal(signal.SIGHUP)
        self.contexts.update({k: v for k, v in build_listener_contexts(cfg).items() if k in self.contexts})
        for name, runtime in self.runtimes.items():
            if name in cfg.listeners:     # a listener gone from the file runs on as it was
                runtime.configure(self.contexts[name], tls[name])
        disk = self.svc.disk
        assert disk is not None         # start() makes one
        disk.min_free = cfg.relay.min_free_space
        self.svc.store.in_flow_delay = cfg.delivery.in_flow_delay
        self.cfg = cfg
        print("relaywarden: configuration reloaded", file=sys.stderr, flush=True)
        if applied:
            print(f"relaywarden: reload: applied: {', '.join(applied)}", flush=True)
        if restart:
            print(f"relaywarden: reload: needs a restart: {', '.join(restart)}", flush=True)
        log.event(MailEvent.RELOAD, result="ok", source=cfg.source,
                  applied=",".join(applied) or "-", restart=",".join(restart) or "-")
        _flush_log(log, "receiving")

    def _reap_child(self) -> None:
        child = self.child
        assert child is not None
        try:
            child.wait(timeout=DRAIN_SECONDS + 5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    def _reap_admin(self) -> None:
        child = self.admin_child
        assert child is not None
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        if self.admin_child is not None:
            assert self._admin_fd is not None       # set with admin_child
            os.close(self._admin_fd)         # its lifeline: it stops (beside the drain below)
            self.admin_child.send_signal(signal.SIGTERM)
        services = self.svc
        if self.pickup is not None:         # issue 16: its commits in flight finish first
            await self.pickup.stop()
        # Let sessions finish what they are doing (a commit in flight must answer its 250).
        deadline = asyncio.get_running_loop().time() + DRAIN_SECONDS
        while services.tasks and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for session in list(services.sessions):
            if session.transport is not None:
                session.transport.write(b"421 4.3.2 Service shutting down\r\n")
                session.transport.close()
        if self._flusher is not None:
            self._flusher.cancel()
        if self.worker is not None:
            await self.worker.stop()
        if self.child is not None:
            assert self._wake_fd is not None        # set with child
            os.close(self._wake_fd)          # the child's lifeline: it drains and exits
            self.child.send_signal(signal.SIGTERM)
            await asyncio.get_running_loop().run_in_executor(None, self._reap_child)
        if self.admin_child is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._reap_admin)
        await asyncio.sleep(0)
        services.store.close()
        services.mail_log.close()
        if services.protocol_log is not None:
            services.protocol_log.close()
        if self.outbound_log is not None:
            self.outbound_log.close()


async def serve(cfg: Config, config_path: Path | None) -> int:
    try:
        relay = Relay(cfg)
        relay.config_path = config_path
    except CertificateError as exc:    # the files changed since the config was checked
        print(f"relaywarden: {cfg.source}: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        await relay.start()
    except OSError as exc:
        print(f"relaywarden: cannot listen: {exc}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, relay.request_stop)
    loop.add_signal_handler(signal.SIGINT, relay.request_stop)
    loop.add_signal_handler(signal.SIGHUP, relay.reload, config_path)
    loop.add_signal_handler(signal.SIGUSR1, relay.flush_now)
    await relay.wait_stopped()
    await relay.stop()
    print("relaywarden: stopped", file=sys.stderr, flush=True)
    return 0


async def deliver(cfg: Config, config_path: Path | None, wake_fd: int) -> int:
    """The delivery process of a relay with delivery.process = "separate"."""
    metrics.setup(cfg.data_dir, role="delivery")
    store = Store.open(cfg.data_dir)
    mail_log, _ = build_logs(cfg)
    outbound_log = build_outbound_log(cfg)
    worker = DeliveryWorker(cfg, store=store, mail_log=mail_log, protocol_log=outbound_log)
    if cfg.delivery.handoff:
        # The receiving process's new mail comes from its log (queue/log.py, Follower).
        store.start_following()
        store.on_index_scan = worker.wake
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            data = os.read(wake_fd, 4096)
        except BlockingIOError:
            return
        if data:
            worker.wake()
        else:
            stop.set()   # the receiving process is gone

    def reload() -> None:
        try:
            worker.reload(load_config(config_path))
        except ConfigError:
            pass         # the receiving process reports it

    os.set_blocking(wake_fd, False)
    loop.add_reader(wake_fd, readable)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)   # the parent decides (Ctrl-C)
    loop.add_signal_handler(signal.SIGHUP, reload)
    flushes = [0]

    def flush_now() -> None:
        _flush_log(mail_log, "delivery")
        if outbound_log is not None:
            _flush_log(outbound_log, "delivery")
        flushes[0] += 1
        _flush_marker(cfg.data_dir, "delivery", flushes[0])

    loop.add_signal_handler(signal.SIGUSR1, flush_now)
    # Ready for SIGUSR1: the receiving process passes it on only once this file exists.
    _flush_marker(cfg.data_dir, "delivery", 0)
    await worker.start()

    async def flush_logs() -> None:
        while True:
            await asyncio.sleep(LOG_FLUSH_SECONDS)
            _flush_log(mail_log, "delivery")
            if outbound_log is not None:
                _flush_log(outbound_log, "delivery")

    flusher = loop.create_task(flush_logs())
    await stop.wait()
    flusher.cancel()
    loop.remove_reader(wake_fd)
    await worker.stop()
    store.close()
    mail_log.close()
    if outbound_log is not None:
        outbound_log.close()
    return 0


def run_worker(cfg: Config, config_path: Path | None, wake_fd: int) -> int:
    collector.tune()
    # delivery.nice: before any thread starts, so that every thread of the process has it
    # (a thread takes its creator's). Lowering a priority needs no privilege.
    if cfg.delivery.nice:
        try:
            os.nice(cfg.delivery.nice)
        except OSError as exc:     # (a sandbox that forbids it): deliver at full priority
            print(f"relaywarden: delivery.nice: cannot lower the delivery process's priority:"
                  f" {exc}", file=sys.stderr, flush=True)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(deliver(cfg, config_path, wake_fd))
    return uvloop.run(deliver(cfg, config_path, wake_fd))


def _raise_fd_limit() -> None:
    """Every session is a file descriptor: take the hard limit, not the 1024 soft default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(cfg: Config, config_path: Path | None) -> int:
    _raise_fd_limit()
    collector.tune()
    try:
        import uvloop  # optional: the "fast" extra
    except ImportError:
        return asyncio.run(serve(cfg, config_path))
    return uvloop.run(serve(cfg, config_path))
