"""The running service: settings -> Vault -> credentials -> cluster cache -> dispatcher -> API.

``Service`` wires the layers together, starts them in order (informers synced before the
dispatcher re-attaches, so re-attachment sees every pod) and stops them in reverse.
``serve`` runs it under uvicorn.

I/O: everything, through the layers it wires.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import structlog
import uvicorn
from prometheus_client import start_http_server

from dispatcher import __version__, metrics, tracing
from dispatcher.api.app import create_app
from dispatcher.api.auth import Authenticator, TokenReviewer
from dispatcher.api.console import mount_console
from dispatcher.clusters import ClusterCache
from dispatcher.core import ClusterRole, Snapshot
from dispatcher.core.fairshare import FairShareSettings
from dispatcher.core.tenancy import Principal
from dispatcher.credentials import CredentialProvider, VaultSession, remove_all_key_material
from dispatcher.dispatching import Dispatcher, Fence, KubernetesRecords, RecordStore
from dispatcher.dispatching.leader import LeaderElector
from dispatcher.errors import ConfigError, Problem
from dispatcher.logging import configure_logging
from dispatcher.settings import Settings, load_fair_share
from dispatcher.supervise import Supervisor

log = structlog.get_logger("dispatcher.service")

#: A replica that lost (or could not take up) leadership exits with this code.
STEPPED_DOWN_EXIT_CODE = 3


class Service:
    """Everything one dispatcher process runs."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: RecordStore | None = None,
        settings_path: str | Path | None = None,
    ) -> None:
        problems = settings.service.auth.problems()
        if problems:
            raise ConfigError(problems)
        self.settings = settings
        #: The file the settings came from: its ``fair_share`` section is reloaded.
        self.settings_path = Path(settings_path) if settings_path is not None else None
        self.vault = VaultSession(settings.vault) if settings.vault else None
        self.provider = CredentialProvider(settings, self.vault)
        # Runs the informer and election threads; /healthz is its healthy().
        self.supervisor = Supervisor()
        self.cache = ClusterCache(settings, self.provider, supervisor=self.supervisor)
        state_cluster = settings.service.state_cluster or _in_plane(settings)
        state = self.cache.connection(state_cluster)
        # Records and the Lease go through the state cluster's one Connection (paced,
        # timed, counted, errors translated), like every other Kubernetes call.
        self.store: RecordStore = store or KubernetesRecords(
            state, settings.service.state_namespace
        )
        self._started = threading.Event()
        self._stopping = threading.Event()
        self._failure: str | None = None
        self._exit_lock = threading.Lock()
        self._exiting = False
        self.elector: LeaderElector | None = None
        fence: Callable[[], Fence | None] = _single_replica
        if settings.service.leader_election:
            self.elector = LeaderElector(
                state,
                namespace=settings.service.state_namespace,
                name=settings.service.lease_name,
                identity=_identity(),
                lease_duration=settings.service.lease_duration_seconds,
                renew_deadline=settings.service.renew_deadline_seconds,
                retry_period=settings.service.retry_period_seconds,
                on_started=self._lead,
                on_stopped=self._stopped_leading,
                supervisor=self.supervisor,
            )
            fence = self.elector.fence
        self.dispatcher = Dispatcher(
            self.cache,
            self.store,
            clusters=tuple(c.name for c in settings.clusters),
            policy=settings.routing,
            service=settings.service,
            unreachable={c.name: c.on_unreachable for c in settings.clusters},
            fence=fence,
            on_fenced=self._fenced if settings.service.leader_election else None,
            tenants=settings.tenants if settings.service.auth.enabled else None,
            fair_share=settings.fair_share,
            vault=self.vault,
        )
        self.reloader = (
            SettingsReloader(self.settings_path, self.dispatcher.set_fair_share)
            if self.settings_path is not None
            else None
        )
        self.authenticator = Authenticator(
            settings.service.auth, settings.tenants, self._reviewer(settings)
        )

    def _reviewer(self, settings: Settings) -> TokenReviewer | None:
        review = settings.service.auth.token_review
        if review is None:
            return None
        cluster = review.cluster or _in_plane(settings, "service.auth.token_review.cluster")
        if settings.cluster(cluster) is None:
            raise ConfigError(
                [Problem("service.auth.token_review.cluster", f"{cluster!r} is not configured")]
            )
        return TokenReviewer(self.cache.connection(cluster), review.audience)

    def _lead(self) -> None:
        # Re-attaching lists every record and managed pod: not on the election thread,
        # which must go on renewing the Lease meanwhile.
        threading.Thread(target=self._start_leading, name="kd-start-leading", daemon=True).start()

    def _start_leading(self) -> None:
        try:
            self.dispatcher.start()
        except Exception as exc:
            log.exception("service.start_leading_failed")
            self._step_down(f"could not start leading: {exc}")

    def _stopped_leading(self) -> None:
        # Called before the Lease is released: at shutdown, stop dispatching first.
        if self._stopping.is_set():
            self.dispatcher.stop()
        else:
            self._step_down("leadership lost")

    def _step_down(self, why: str) -> None:
        """Leave for good, once the election thread has released the Lease (if it still
        held it): a restart begins again from the records and the clusters, as client-go's
        leader election does, and another replica can take over at once."""
        with self._exit_lock:
            if self._exiting:
                return
            self._exiting = True
        log.error("service.stepping_down", why=why)
        threading.Thread(target=self._exit, name="kd-step-down", daemon=True).start()

    def _exit(self) -> None:
        if self.elector is not None:
            # Steps down if it still leads, releases the Lease it holds, ends its thread.
            self.elector.stop()
        # os._exit runs no finalizer or atexit handler: revoke the Vault leases and remove
        # the client key files now, or they would outlive the process.
        try:
            self.provider.close()
        except Exception as exc:
            log.error("service.exit_cleanup_failed", error=str(exc))
        remove_all_key_material()
        log.error("service.exiting", code=STEPPED_DOWN_EXIT_CODE)
        os._exit(STEPPED_DOWN_EXIT_CODE)

    def _fenced(self) -> None:
        self._step_down("a record write was refused for this leader term")

    def start(self, sync_timeout: float = 30.0) -> None:
        metrics.BUILD_INFO.info({"version": __version__})
        started = time.monotonic()
        interval = self.settings.service.credential_refresh_seconds
        self._refresher = self.supervisor.spawn(
            "kd-credentials", lambda thread: self.provider.refresh_forever(thread.wait, interval)
        )
        if self.reloader is not None:
            reloader, every = self.reloader, self.settings.service.settings_reload_seconds
            self._reloading = self.supervisor.spawn(
                "kd-settings", lambda thread: reloader.forever(thread.wait, every)
            )
        self.cache.start()
        synced = self.cache.wait_synced(sync_timeout)
        if not synced:
            log.warning("service.caches_not_synced", timeout=sync_timeout)
        refused = self.cache.refused()
        if refused:
            # Not waited for: a refused credential needs a person (see GET /v1/clusters).
            log.error("service.clusters_refused", clusters=list(refused))
        if self.elector is None:
            self.dispatcher.start()
            metrics.LEADER.set(1)
        else:
            # Followers serve reads of the clusters; the leader alone dispatches.
            self.elector.start()
        self._started.set()
        log.info("service.started", seconds=round(time.monotonic() - started, 2))

    def stop(self) -> None:
        self._stopping.set()
        if self.elector is not None:
            self.elector.stop()
        self.dispatcher.stop()
        self.cache.stop()
        for thread in (getattr(self, "_refresher", None), getattr(self, "_reloading", None)):
            if thread is not None:
                thread.stop()
                thread.join(5)
        self.provider.close()
        metrics.LEADER.set(0)

    def fail(self, why: str) -> None:
        """Start-up failed: readiness says why (the process stays up for its probes)."""
        self._failure = why

    # Runtime protocol (the API's view).
    def ready(self) -> tuple[bool, str]:
        if self._failure:
            return False, self._failure
        if not self._started.is_set():
            return False, "starting"
        return True, "ready"

    def healthy(self) -> tuple[bool, str]:
        return self.supervisor.healthy()

    def leading(self) -> bool:
        return self.elector is None or self.elector.leading

    def snapshot(self) -> Snapshot:
        return self.cache.snapshot()

    def authenticate(self, authorization: str | None) -> Principal:
        return self.authenticator.authenticate(authorization)

    # The console's view (``dispatcher.api.console.ConsoleRuntime``).
    def cluster_status(self, cluster: str) -> str:
        return self.cache.status(cluster).message

    def credential_expiry(self, cluster: str) -> float | None:
        return self.provider.expiry(cluster)


class SettingsReloader:
    """Applies the settings file's ``fair_share`` section when the file changes.

    A file that no longer validates is logged (every problem at its field) and counted
    in ``dispatcher_settings_reloads_total{outcome="invalid"}``; the settings in force
    stay as they were, and the next change is tried again.
    """

    def __init__(self, path: Path, apply: Callable[[FairShareSettings], None]) -> None:
        self._path = path
        self._apply = apply
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int] | None:
        try:
            stat = self._path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def check(self) -> bool:
        """Reload if the file changed since last seen; whether new settings applied."""
        stamp = self._stamp()
        if stamp is None or stamp == self._seen:
            return False
        self._seen = stamp
        try:
            fair_share = load_fair_share(self._path)
        except ConfigError as exc:
            metrics.SETTINGS_RELOADS.labels(outcome="invalid").inc()
            log.error("service.settings_reload_invalid", problems=str(exc))
            return False
        self._apply(fair_share)
        metrics.SETTINGS_RELOADS.labels(outcome="applied").inc()
        log.info("service.settings_reloaded", section="fair_share")
        return True

    def forever(self, wait: Callable[[float], bool], interval: float) -> None:
        while not wait(interval):
            self.check()


def _identity() -> str:
    """This replica's name in the Lease: the pod name when the chart sets it."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}-{uuid.uuid4().hex[:6]}"


def _single_replica() -> Fence:
    # Without leader election there is no Lease; the store's fencing policy allows writes
    # when no Lease exists (one replica by configuration).
    return Fence(holder="", term=0)


def _in_plane(settings: Settings, field: str = "service.state_cluster") -> str:
    for cluster in settings.clusters:
        if cluster.role is ClusterRole.IN_PLANE:
            return cluster.name
    raise ConfigError([Problem(field, "required when no cluster has role in-plane")])


def serve(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    settings_path: str | Path | None = None,
) -> None:
    """Run the service until interrupted: API first (so probes answer), then the rest.

    ``settings_path``: the file ``settings`` came from, whose ``fair_share`` section is
    then reloaded when it changes."""
    configure_logging(json=settings.service.log_json, level=settings.service.log_level)
    tracing.configure(settings.tracing)
    service = Service(settings, settings_path=settings_path)
    if settings.service.auth.insecure_development_mode:
        log.warning(
            "service.authentication_disabled",
            detail="INSECURE: service.auth.insecure_development_mode is set; every caller is "
            "an administrator. For local development only.",
        )
    metrics_port = settings.service.metrics_port
    app = create_app(
        service,
        max_body_bytes=settings.service.max_body_bytes,
        max_json_depth=settings.service.max_json_depth,
        max_waits_per_client=settings.service.max_waits_per_client,
        max_log_follows_per_client=settings.service.max_log_follows_per_client,
        max_log_follows=settings.service.max_log_follows,
        metrics_route=metrics_port is None,
    )
    if settings.service.console.enabled:
        mount_console(app, service, settings.service.console)
    starter = threading.Thread(target=_start_in_background, args=(service,), daemon=True)

    @app.on_event("startup")
    def _startup() -> None:
        if metrics_port is not None:
            # Its own port, so a NetworkPolicy can open it to Prometheus alone.
            start_http_server(
                metrics_port, addr=host or settings.service.host, registry=metrics.REGISTRY
            )
        starter.start()

    @app.on_event("shutdown")
    def _shutdown() -> None:
        service.stop()
        tracing.shutdown()

    uvicorn.run(
        app,
        host=host or settings.service.host,
        port=port or settings.service.port,
        log_level="warning",
        access_log=False,
        # Followed log streams never end on their own: do not let them hold a shutdown.
        timeout_graceful_shutdown=5,
    )


def _start_in_background(service: Service) -> None:
    try:
        service.start()
    except Exception as exc:  # readiness reports it; the process stays up for probes
        service.fail(f"start failed: {exc}")
        log.exception("service.start_failed")
