"""Start, stop and describe the local multi-cluster test stack.

What runs (all on 127.0.0.1, every port offset from ``KD_STACK_PORT_BASE``):

* one etcd serving every cluster under its own key prefix;
* per cluster (``plane``, ``gpu-a100``, ``gpu-h100``): a real kube-apiserver, a real
  kube-scheduler and a KWOK controller that simulates the nodes and drives pods through
  the stages in ``stages/`` (and serves container logs through the apiserver);
* a Vault server (HashiCorp Vault 1.13.0, MPL; see README.md for why not OpenBao) in dev
  mode, configured with KV v2 kubeconfigs, Kubernetes auth, AppRole and the Kubernetes
  secrets engine.

Processes run in their own sessions so the stack outlives ``python -m tests.stack up``;
their pids are kept in the state folder. ``env.json`` there tells every address and
credential. This module does I/O of every kind; it is test infrastructure, not product.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
import yaml

from . import build
from .pki import Pki, ensure_pki

STAGES_DIR = Path(__file__).resolve().parent / "stages"
#: The audit policy of a stack started with ``audit=True`` (Metadata level, every user).
AUDIT_POLICY = Path(__file__).resolve().parent / "audit-policy.yaml"
REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "deploy" / "helm" / "kube-dispatcher"
#: Job records (the chart's CRD) and their fencing (the chart's policy and binding): the
#: stack installs the chart's own files in `plane`.
RECORDS_CRD = CHART_DIR / "crds" / "dispatchjobs.yaml"
FENCING_POLICY = CHART_DIR / "files" / "fencing.yaml"

TASK_NAMESPACE = "dispatch"
#: Labels of every namespace tasks run in (``dispatch`` and the tests' own): the API
#: server's PodSecurity admission enforces the baseline standard there, as the shipped
#: namespaces in deploy/ do, behind the dispatcher's own check.
TASK_NAMESPACE_LABELS = {
    "pod-security.kubernetes.io/enforce": "baseline",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
DISPATCHER_NAMESPACE = "kube-dispatcher"
DISPATCHER_SA = "kube-dispatcher"
RESTRICTED_SA = "dispatcher"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
VAULT_ROOT_TOKEN = "root"
VAULT_KV_MOUNT = "secret"
VAULT_KUBE_AUTH_MOUNT = "kubernetes"
VAULT_APPROLE_MOUNT = "approle"
VAULT_POLICY = "kube-dispatcher"
VAULT_ROLE = "kube-dispatcher"
# Fixed so that a restarted (in-memory, dev mode) Vault is configured identically.
APPROLE_ROLE_ID = "kube-dispatcher-role-id"
APPROLE_SECRET_ID = "kube-dispatcher-secret-id-for-tests"


@dataclass(frozen=True)
class NodePool:
    """A set of identical simulated nodes."""

    prefix: str
    count: int
    cpu: str
    memory: str
    gpus: int = 0
    gpu_product: str | None = None
    instance_type: str = "kwok.cpu"
    tainted: bool = False


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    index: int
    region: str
    pools: tuple[NodePool, ...]


def default_clusters(
    plane_nodes: int = 3, a100_nodes: int = 4, h100_nodes: int = 2
) -> tuple[ClusterSpec, ...]:
    return (
        ClusterSpec(
            "plane",
            0,
            "us-east-1",
            (
                NodePool(
                    "plane-cpu", plane_nodes, cpu="16", memory="64Gi", instance_type="m6i.4xlarge"
                ),
            ),
        ),
        ClusterSpec(
            "gpu-a100",
            1,
            "us-east-1",
            (
                NodePool(
                    "a100",
                    a100_nodes,
                    cpu="96",
                    memory="1152Gi",
                    gpus=8,
                    gpu_product="NVIDIA-A100-SXM4-80GB",
                    instance_type="p4de.24xlarge",
                    tainted=True,
                ),
            ),
        ),
        ClusterSpec(
            "gpu-h100",
            2,
            "eu-west-1",
            (
                NodePool(
                    "h100",
                    h100_nodes,
                    cpu="192",
                    memory="2048Gi",
                    gpus=8,
                    gpu_product="NVIDIA-H100-80GB-HBM3",
                    instance_type="p5.48xlarge",
                    tainted=True,
                ),
            ),
        ),
    )


def state_dir_default() -> Path:
    return Path(os.environ.get("KD_STACK_DIR", str(REPO_ROOT / ".stack")))


def port_base_default() -> int:
    return int(os.environ.get("KD_STACK_PORT_BASE", "27400"))


class StackError(RuntimeError):
    """The stack could not start or answer; the message says which part and where its log is."""


@dataclass
class ClusterEnv:
    name: str
    server: str
    region: str
    ca_file: str
    admin_token: str
    admin_kubeconfig: str
    restricted_kubeconfig: str
    task_namespace: str = TASK_NAMESPACE
    nodes: list[str] = field(default_factory=list)


@dataclass
class VaultEnv:
    addr: str
    root_token: str
    kv_mount: str
    kv_paths: dict[str, str]
    kubernetes_auth_mount: str
    kubernetes_auth_role: str
    approle_mount: str
    approle_role_id: str
    approle_secret_id: str
    kubernetes_secrets_mount: str
    kubernetes_secrets_role: str
    policy: str


@dataclass
class StackEnv:
    """Every address and credential of a running stack (``env.json``)."""

    state_dir: str
    ca_file: str
    clusters: dict[str, ClusterEnv]
    vault: VaultEnv
    dispatcher_namespace: str = DISPATCHER_NAMESPACE
    dispatcher_service_account: str = DISPATCHER_SA

    @classmethod
    def load(cls, path: Path) -> StackEnv:
        raw = json.loads(path.read_text())
        return cls(
            state_dir=raw["state_dir"],
            ca_file=raw["ca_file"],
            clusters={k: ClusterEnv(**v) for k, v in raw["clusters"].items()},
            vault=VaultEnv(**raw["vault"]),
            dispatcher_namespace=raw["dispatcher_namespace"],
            dispatcher_service_account=raw["dispatcher_service_account"],
        )

    def shell_exports(self) -> str:
        lines = [
            f"export KD_STACK_DIR={self.state_dir}",
            f"export VAULT_ADDR={self.vault.addr}",
            f"export VAULT_TOKEN={self.vault.root_token}",
        ]
        for name, cluster in self.clusters.items():
            var = name.upper().replace("-", "_")
            lines.append(f"export KD_{var}_SERVER={cluster.server}")
            lines.append(f"export KD_{var}_KUBECONFIG={cluster.admin_kubeconfig}")
        lines.append(
            "export KUBECONFIG=" + ":".join(c.admin_kubeconfig for c in self.clusters.values())
        )
        return "\n".join(lines)


def kubeconfig_dict(
    name: str,
    server: str,
    ca_pem: str,
    token: str,
    *,
    namespace: str = "default",
    user: str | None = None,
) -> dict[str, Any]:
    """A self-contained kubeconfig: inline CA and bearer token, no file paths."""
    user = user or f"{name}-user"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem.encode()).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {"name": name, "context": {"cluster": name, "user": user, "namespace": namespace}}
        ],
        "current-context": name,
    }


class Stack:
    """The multi-cluster stack rooted at one state folder."""

    def __init__(
        self,
        state_dir: Path | None = None,
        port_base: int | None = None,
        clusters: tuple[ClusterSpec, ...] | None = None,
        out: TextIO = sys.stderr,
        *,
        audit: bool = False,
    ) -> None:
        self.state_dir = (state_dir or state_dir_default()).resolve()
        self.port_base = port_base if port_base is not None else port_base_default()
        self.clusters = clusters or default_clusters()
        self.out = out
        #: Start the apiservers with an audit log (``audit_log``); opt-in, since every
        #: request then costs a line of JSON on disk.
        self.audit = audit
        self._bins: dict[str, Path] = {}

    # ----- layout -------------------------------------------------------------------
    @property
    def env_file(self) -> Path:
        return self.state_dir / "env.json"

    @property
    def pids_file(self) -> Path:
        return self.state_dir / "pids.json"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    def container_log_file(self, cluster: str) -> Path:
        """The CRI-format file every container of ``cluster`` serves as its log."""
        return self.state_dir / "container-logs" / f"{cluster}.log"

    @property
    def _audit_policy_copy(self) -> Path:
        return self.state_dir / "audit-policy.yaml"

    def audited(self) -> bool:
        """Whether this stack's apiservers were started with an audit log (decided at
        ``up``: a restarted apiserver keeps what its stack started with)."""
        return self._audit_policy_copy.is_file()

    def audit_log(self, cluster: ClusterSpec | str) -> Path:
        """The apiserver's audit log of ``cluster`` (JSON lines; read with tests.stack.audit)."""
        return self.state_dir / "audit" / f"{self._spec(cluster).name}.log"

    def etcd_port(self) -> int:
        return self.port_base

    def apiserver_port(self, cluster: ClusterSpec | str) -> int:
        return self.port_base + 10 + self._spec(cluster).index

    def kwok_port(self, cluster: ClusterSpec | str) -> int:
        return self.port_base + 20 + self._spec(cluster).index

    def vault_port(self) -> int:
        return self.port_base + 30

    def ports(self) -> list[int]:
        """Every port the stack listens on."""
        ports = [self.etcd_port(), self.etcd_port() + 1, self.vault_port()]
        for spec in self.clusters:
            ports += [
                self.apiserver_port(spec),
                self.kwok_port(spec),
                self.port_base + 40 + spec.index,
            ]
        return ports

    def _check_ports_free(self) -> None:
        taken = []
        for port in self.ports():
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    taken.append(port)
        if taken:
            raise StackError(
                f"ports {taken} are in use (another stack, or clients' ephemeral ports): "
                "choose another KD_STACK_PORT_BASE, below the ephemeral range "
                "(/proc/sys/net/ipv4/ip_local_port_range)"
            )

    def server(self, cluster: ClusterSpec | str) -> str:
        return f"https://127.0.0.1:{self.apiserver_port(cluster)}"

    @property
    def vault_addr(self) -> str:
        return f"http://127.0.0.1:{self.vault_port()}"

    def _spec(self, cluster: ClusterSpec | str) -> ClusterSpec:
        if isinstance(cluster, ClusterSpec):
            return cluster
        for spec in self.clusters:
            if spec.name == cluster:
                return spec
        raise KeyError(f"no cluster named {cluster!r} in the stack")

    def _say(self, message: str) -> None:
        print(f"stack: {message}", file=self.out, flush=True)

    # ----- process bookkeeping ----------------------------------------------------------
    def _pids(self) -> dict[str, int]:
        if not self.pids_file.is_file():
            return {}
        return {k: int(v) for k, v in json.loads(self.pids_file.read_text()).items()}

    def _save_pids(self, pids: dict[str, int]) -> None:
        self.pids_file.write_text(json.dumps(pids, indent=1, sort_keys=True))

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # A zombie child of this process still answers kill(0): reap it if so.
        with contextlib.suppress(ChildProcessError):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return False
        return True

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.logs_dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=self.state_dir,
        )
        log.close()
        pids = self._pids()
        pids[name] = proc.pid
        self._save_pids(pids)
        return proc.pid

    def _kill(self, name: str, timeout: float = 10.0) -> None:
        self._kill_all([name], timeout)

    def _kill_all(self, names: list[str], timeout: float = 10.0) -> None:
        """SIGTERM every named process group at once; SIGKILL what is left after ``timeout``."""
        if not names:
            return
        pids = self._pids()
        targets = [pid for pid in (pids.pop(name, None) for name in names) if pid is not None]
        self._save_pids(pids)
        targets = [pid for pid in targets if self._alive(pid)]
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(self._alive(pid) for pid in targets):
            time.sleep(0.05)
        for pid in targets:
            if self._alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        while any(self._alive(pid) for pid in targets):
            time.sleep(0.05)

    def _log_tail(self, name: str, lines: int = 25) -> str:
        path = self.logs_dir / f"{name}.log"
        if not path.is_file():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _wait(self, name: str, check: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            pid = self._pids().get(name)
            if pid is not None and not self._alive(pid):
                raise StackError(
                    f"{name} exited while starting; log {self.logs_dir / (name + '.log')}:\n"
                    + self._log_tail(name)
                )
            try:
                if check():
                    return
            except Exception as exc:
                last = exc
            time.sleep(0.2)
        raise StackError(
            f"{name} not ready after {timeout:.0f}s (last error: {last}); log "
            f"{self.logs_dir / (name + '.log')}:\n{self._log_tail(name)}"
        )

    # ----- status -------------------------------------------------------------------
    def is_up(self) -> bool:
        if not self.env_file.is_file():
            return False
        pids = self._pids()
        expected = {"etcd", "vault"}
        for spec in self.clusters:
            expected |= {f"{spec.name}-apiserver", f"{spec.name}-scheduler", f"{spec.name}-kwok"}
        return expected <= pids.keys() and all(self._alive(pids[n]) for n in expected)

    def status(self) -> dict[str, str]:
        result = {}
        for name, pid in sorted(self._pids().items()):
            result[name] = f"running (pid {pid})" if self._alive(pid) else f"dead (pid {pid})"
        return result

    def env(self) -> StackEnv:
        if not self.env_file.is_file():
            raise StackError(f"no stack state at {self.state_dir}: run `python -m tests.stack up`")
        return StackEnv.load(self.env_file)

    # ----- HTTP helpers -------------------------------------------------------------
    def _ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(Pki(self.state_dir / "pki").ca_cert))

    def _admin_token(self) -> str:
        return (self.state_dir / "admin.token").read_text().strip()

    def _apiserver_ready(self, cluster: ClusterSpec | str) -> bool:
        response = httpx.get(
            f"{self.server(cluster)}/readyz",
            headers={"Authorization": f"Bearer {self._admin_token()}"},
            verify=self._ssl(),
            timeout=2.0,
        )
        return response.status_code == 200

    def kube(self, cluster: ClusterSpec | str, token: str | None = None) -> Any:
        """A kubernetes ``ApiClient`` for ``cluster`` (admin unless ``token`` is given)."""
        from kubernetes import client

        conf = client.Configuration()
        conf.host = self.server(cluster)
        conf.ssl_ca_cert = str(Pki(self.state_dir / "pki").ca_cert)
        # Both names: kubernetes 36.x reads BearerToken, up to 35.x authorization
        # (dispatcher.credentials.clients.bearer_token says why).
        keys = ("BearerToken", "authorization")
        conf.api_key = dict.fromkeys(keys, token or self._admin_token())
        conf.api_key_prefix = dict.fromkeys(keys, "Bearer")
        return client.ApiClient(conf)

    # ----- up / down ----------------------------------------------------------------
    def up(self) -> StackEnv:
        """Start every part unless already running; return the stack's env.

        A start that fails stops what it started (the state folder stays for its logs).
        """
        if self.is_up():
            self._say(f"already up ({self.state_dir})")
            return self.env()
        try:
            return self._up()
        except BaseException:
            self.down(quiet=True)
            raise

    def _up(self) -> StackEnv:
        started = time.monotonic()
        self.down(quiet=True)
        self._bins = build.build(out=self.out)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self.state_dir.mkdir(parents=True, mode=0o700)
        pki = ensure_pki(self.state_dir / "pki")
        admin_token = secrets.token_urlsafe(24)
        (self.state_dir / "admin.token").write_text(admin_token)
        (self.state_dir / "tokens.csv").write_text(
            f'{admin_token},admin,admin-uid,"system:masters"\n'
        )
        self._check_ports_free()
        self._write_kwok_configs()
        if self.audit:
            (self.state_dir / "audit").mkdir(mode=0o700)
            shutil.copy(AUDIT_POLICY, self._audit_policy_copy)

        self._start_etcd()
        for spec in self.clusters:
            self._start_apiserver(spec)
        for spec in self.clusters:
            self._wait(f"{spec.name}-apiserver", lambda s=spec: self._apiserver_ready(s), 90)
        self._say(f"apiservers ready after {time.monotonic() - started:.1f}s")
        self._write_admin_kubeconfigs(pki)
        for spec in self.clusters:
            self._start_scheduler(spec)
            self._start_kwok(spec)
        self._start_vault()
        with ThreadPoolExecutor(max_workers=len(self.clusters)) as pool:
            restricted = dict(
                zip(
                    [s.name for s in self.clusters],
                    pool.map(self._bootstrap_cluster, self.clusters),
                    strict=True,
                )
            )
        env = self._write_env(pki, admin_token, restricted)
        self._wait("vault", self._vault_ready, 60)
        self.configure_vault()
        self._wait_nodes_ready()
        self._say(f"up in {time.monotonic() - started:.1f}s; env: {self.env_file}")
        return env

    def down(self, quiet: bool = False) -> None:
        """Stop every process of the stack (the state folder stays for post-mortems)."""
        names = list(self._pids())
        # Components before etcd so apiservers do not log a storm of etcd errors; all of
        # them at once (one by one, their graceful shutdowns took about 30 s).
        self._kill_all([n for n in names if n != "etcd"])
        self._kill_all([n for n in names if n == "etcd"])
        if not quiet:
            self._say("down")

    # ----- components ---------------------------------------------------------------
    def _bin(self, name: str) -> str:
        if not self._bins:
            self._bins = build.binary_paths()
        path = self._bins[name]
        if not path.is_file():
            raise StackError(build.not_built(name, path))
        return str(path)

    def _start_etcd(self) -> None:
        port = self.etcd_port()
        self._spawn(
            "etcd",
            [
                self._bin("etcd"),
                "--name=stack",
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{port}",
                f"--advertise-client-urls=http://127.0.0.1:{port}",
                f"--listen-peer-urls=http://127.0.0.1:{port + 1}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{port + 1}",
                f"--initial-cluster=stack=http://127.0.0.1:{port + 1}",
                "--unsafe-no-fsync=true",
                "--quota-backend-bytes=8589934592",
                "--log-level=warn",
            ],
        )
        self._wait(
            "etcd",
            lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200,
            30,
        )

    def _audit_flags(self, spec: ClusterSpec) -> list[str]:
        if not self.audited():
            return []
        return [
            f"--audit-policy-file={self._audit_policy_copy}",
            f"--audit-log-path={self.audit_log(spec)}",
            "--audit-log-format=json",
            # Written synchronously by the request's own handler: no batch that drops
            # events under load, so a count is exact once the last event is in the file.
            "--audit-log-mode=blocking",
            # No rotation within a run (the log is read as one file); 0 would mean 100 MB.
            "--audit-log-maxsize=100000",
        ]

    def _start_apiserver(self, spec: ClusterSpec) -> None:
        pki = Pki(self.state_dir / "pki")
        self._spawn(
            f"{spec.name}-apiserver",
            [
                self._bin("kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port()}",
                f"--etcd-prefix=/{spec.name}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port(spec)}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                f"--service-account-issuer=https://{spec.name}.stack.invalid",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                "--service-cluster-ip-range=10.0.0.0/24",
                f"--token-auth-file={self.state_dir / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                # No kube-controller-manager runs: nothing would create default
                # ServiceAccounts or lift the not-ready taint this plugin puts on new nodes.
                "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition",
                "--endpoint-reconciler-type=none",
                f"--kubelet-client-certificate={pki.kubelet_client_cert}",
                f"--kubelet-client-key={pki.kubelet_client_key}",
                "--kubelet-preferred-address-types=InternalIP",
                "--allow-privileged=true",
                "--profiling=false",
                "--enable-priority-and-fairness=false",
                "--max-requests-inflight=2000",
                "--max-mutating-requests-inflight=1000",
                "--v=1",
                *self._audit_flags(spec),
            ],
        )

    def _write_admin_kubeconfigs(self, pki: Pki) -> None:
        for spec in self.clusters:
            conf = kubeconfig_dict(
                spec.name, self.server(spec), pki.ca_pem(), self._admin_token(), user="admin"
            )
            path = self.state_dir / "kubeconfigs" / f"{spec.name}-admin.yaml"
            path.parent.mkdir(exist_ok=True, mode=0o700)
            path.write_text(yaml.safe_dump(conf))
            path.chmod(0o600)

    def admin_kubeconfig(self, cluster: ClusterSpec | str) -> Path:
        return self.state_dir / "kubeconfigs" / f"{self._spec(cluster).name}-admin.yaml"

    def _start_scheduler(self, spec: ClusterSpec) -> None:
        kubeconfig = self.admin_kubeconfig(spec)
        self._spawn(
            f"{spec.name}-scheduler",
            [
                self._bin("kube-scheduler"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.port_base + 40 + spec.index}",
                "--kube-api-qps=500",
                "--kube-api-burst=1000",
                "--v=1",
            ],
        )

    def _write_kwok_configs(self) -> None:
        pki = Pki(self.state_dir / "pki")
        stages = (
            (STAGES_DIR / "nodes.yaml").read_text()
            + "\n---\n"
            + (STAGES_DIR / "pods.yaml").read_text()
        )
        for spec in self.clusters:
            log_file = self.container_log_file(spec.name)
            log_file.parent.mkdir(parents=True, exist_ok=True)
            log_file.write_text(
                _cri_lines(
                    [
                        f"simulated container on {spec.name}: starting",
                        "step 1/3",
                        "step 2/3",
                        "step 3/3",
                        "done",
                    ]
                )
            )
            cluster_logs = {
                "apiVersion": "kwok.x-k8s.io/v1alpha1",
                "kind": "ClusterLogs",
                "metadata": {"name": "all-pods"},
                "spec": {"logs": [{"logsFile": str(log_file), "follow": True}]},
            }
            options = {
                "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
                "kind": "KwokConfiguration",
                "metadata": {"name": "kwok"},
                "options": {
                    "manageNodesWithAnnotationSelector": "=".join(KWOK_NODE_ANNOTATION),
                    "nodeIP": "127.0.0.1",
                    "nodePort": self.kwok_port(spec),
                    "serverAddress": f"127.0.0.1:{self.kwok_port(spec)}",
                    "tlsCertFile": str(pki.serving_cert),
                    "tlsPrivateKeyFile": str(pki.serving_key),
                    "cidr": "10.64.0.1/10",
                    "nodeLeaseDurationSeconds": 0,
                    # Left out, these are 0 and KWOK refuses to start.
                    "podPlayStageParallelism": 8,
                    "nodePlayStageParallelism": 4,
                    "nodeLeaseParallelism": 2,
                    "podsOnNodeSyncParallelism": 4,
                    "enablePodsOnNodeSyncListPager": True,
                    "enablePodsOnNodeSyncStreamWatch": True,
                    # Serves pods/log (ClusterLogs) to the apiserver.
                    "enableDebuggingHandlers": True,
                },
            }
            text = (
                yaml.safe_dump(options)
                + "---\n"
                + stages
                + "\n---\n"
                + yaml.safe_dump(cluster_logs)
            )
            (self.state_dir / f"kwok-{spec.name}.yaml").write_text(text)

    def _start_kwok(self, spec: ClusterSpec) -> None:
        self._spawn(
            f"{spec.name}-kwok",
            [
                self._bin("kwok"),
                f"--kubeconfig={self.admin_kubeconfig(spec)}",
                f"--config={self.state_dir / f'kwok-{spec.name}.yaml'}",
                "--v=1",
            ],
        )

    def _start_vault(self) -> None:
        self._spawn(
            "vault",
            [
                self._bin("vault"),
                "server",
                "-dev",
                f"-dev-root-token-id={VAULT_ROOT_TOKEN}",
                f"-dev-listen-address=127.0.0.1:{self.vault_port()}",
                "-dev-no-store-token",
            ],
            env={"VAULT_DISABLE_MLOCK": "true", "HOME": str(self.state_dir)},
        )

    def _vault_ready(self) -> bool:
        response = httpx.get(f"{self.vault_addr}/v1/sys/health", timeout=2.0)
        return response.status_code == 200

    # ----- cluster content ----------------------------------------------------------
    def _bootstrap_cluster(self, spec: ClusterSpec) -> str:
        """Namespaces, identities, RBAC and nodes; returns the restricted kubeconfig path."""
        from kubernetes import client

        api = self.kube(spec)
        core = client.CoreV1Api(api)
        rbac = client.RbacAuthorizationV1Api(api)
        namespaces = [TASK_NAMESPACE] + ([DISPATCHER_NAMESPACE] if spec.name == "plane" else [])
        for ns in namespaces:
            labels = TASK_NAMESPACE_LABELS if ns == TASK_NAMESPACE else {}
            core.create_namespace({"metadata": {"name": ns, "labels": labels}})
        # The identity the dispatcher uses in this cluster: in `plane` its own
        # ServiceAccount, elsewhere the restricted user whose kubeconfig lives in Vault.
        sa_ns = DISPATCHER_NAMESPACE if spec.name == "plane" else TASK_NAMESPACE
        sa_name = DISPATCHER_SA if spec.name == "plane" else RESTRICTED_SA
        core.create_namespaced_service_account(sa_ns, {"metadata": {"name": sa_name}})
        subject = {"kind": "ServiceAccount", "name": sa_name, "namespace": sa_ns}
        rbac.create_cluster_role(
            {
                "metadata": {"name": "kube-dispatcher-nodes"},
                "rules": [
                    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
                    # Read-only, cluster-wide: free capacity counts every pod on a node.
                    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
                ],
            }
        )
        rbac.create_cluster_role_binding(
            {
                "metadata": {"name": "kube-dispatcher-nodes"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "kube-dispatcher-nodes",
                },
                "subjects": [subject],
            }
        )
        rbac.create_cluster_role(
            {
                "metadata": {"name": "kube-dispatcher-tasks"},
                "rules": TASK_RULES,
            }
        )
        if spec.name == "plane":
            self._install_job_records(api)
            rbac.create_cluster_role(
                {"metadata": {"name": "kube-dispatcher-records"}, "rules": RECORDS_RULES}
            )
            self._bind_records(spec, DISPATCHER_NAMESPACE)
        self.grant_task_namespace(spec, TASK_NAMESPACE)
        if spec.name == "plane":
            rbac.create_namespaced_role(
                DISPATCHER_NAMESPACE,
                {
                    "metadata": {"name": "kube-dispatcher-leases"},
                    "rules": [
                        {
                            "apiGroups": ["coordination.k8s.io"],
                            "resources": ["leases"],
                            "verbs": [
                                "get",
                                "list",
                                "watch",
                                "create",
                                "update",
                                "patch",
                                "delete",
                            ],
                        },
                        # Job records (queued and finished jobs survive a restart).
                        {
                            "apiGroups": [""],
                            "resources": ["configmaps"],
                            "verbs": [
                                "get",
                                "list",
                                "watch",
                                "create",
                                "update",
                                "patch",
                                "delete",
                            ],
                        },
                    ],
                },
            )
            rbac.create_namespaced_role_binding(
                DISPATCHER_NAMESPACE,
                {
                    "metadata": {"name": "kube-dispatcher-leases"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "Role",
                        "name": "kube-dispatcher-leases",
                    },
                    "subjects": [subject],
                },
            )
            # Vault's Kubernetes auth reviews the dispatcher's tokens with this identity.
            core.create_namespaced_service_account(
                "kube-system", {"metadata": {"name": "vault-auth"}}
            )
            rbac.create_cluster_role_binding(
                {
                    "metadata": {"name": "vault-auth-delegator"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": "system:auth-delegator",
                    },
                    "subjects": [
                        {"kind": "ServiceAccount", "name": "vault-auth", "namespace": "kube-system"}
                    ],
                }
            )
        if spec.name == "gpu-h100":
            # Vault's Kubernetes secrets engine mints tokens for `dispatcher` with this identity.
            core.create_namespaced_service_account(
                "kube-system", {"metadata": {"name": "vault-secrets"}}
            )
            rbac.create_namespaced_role(
                TASK_NAMESPACE,
                {
                    "metadata": {"name": "vault-token-minter"},
                    "rules": [
                        {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get"]},
                        {
                            "apiGroups": [""],
                            "resources": ["serviceaccounts/token"],
                            "verbs": ["create"],
                        },
                    ],
                },
            )
            rbac.create_namespaced_role_binding(
                TASK_NAMESPACE,
                {
                    "metadata": {"name": "vault-token-minter"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "Role",
                        "name": "vault-token-minter",
                    },
                    "subjects": [
                        {
                            "kind": "ServiceAccount",
                            "name": "vault-secrets",
                            "namespace": "kube-system",
                        }
                    ],
                },
            )
        self.create_nodes(spec)
        token = self._bound_token(spec, sa_ns, sa_name, generation=1)
        path = self.state_dir / "kubeconfigs" / f"{spec.name}-restricted.yaml"
        conf = kubeconfig_dict(
            spec.name,
            self.server(spec),
            Pki(self.state_dir / "pki").ca_pem(),
            token,
            namespace=TASK_NAMESPACE,
        )
        path.write_text(yaml.safe_dump(conf))
        path.chmod(0o600)
        api.close()
        return str(path)

    def _install_job_records(self, api: Any) -> None:
        """The DispatchJob CRD (established) and its fencing policy, from the chart."""
        from kubernetes import client

        crd = yaml.safe_load(RECORDS_CRD.read_text())
        extensions = client.ApiextensionsV1Api(api)
        extensions.create_custom_resource_definition(crd)
        admission = client.AdmissionregistrationV1Api(api)
        for doc in yaml.safe_load_all(FENCING_POLICY.read_text()):
            if doc and doc["kind"] == "ValidatingAdmissionPolicy":
                admission.create_validating_admission_policy(doc)
            elif doc:
                admission.create_validating_admission_policy_binding(doc)

        def established() -> bool:
            found = extensions.read_custom_resource_definition(crd["metadata"]["name"])
            conditions = found.status.conditions or []
            return any(c.type == "Established" and c.status == "True" for c in conditions)

        self._wait("plane-apiserver", established, 30)

    def _bind_records(self, spec: ClusterSpec, namespace: str) -> None:
        """Let the dispatcher's ServiceAccount keep job records in ``namespace`` of plane."""
        from kubernetes import client

        with self.kube(spec) as api:
            client.RbacAuthorizationV1Api(api).create_namespaced_role_binding(
                namespace,
                {
                    "metadata": {"name": "kube-dispatcher-records"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": "kube-dispatcher-records",
                    },
                    "subjects": [
                        {
                            "kind": "ServiceAccount",
                            "name": DISPATCHER_SA,
                            "namespace": DISPATCHER_NAMESPACE,
                        }
                    ],
                },
            )

    def allow_token_reviews(self) -> None:
        """Let the dispatcher's ServiceAccount in ``plane`` review tokens (TokenReview, for
        its API's authentication): ``system:auth-delegator``, as the chart binds it.
        Idempotent, so a stack started by older code gets it too."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        with self.kube("plane") as api:
            try:
                client.RbacAuthorizationV1Api(api).create_cluster_role_binding(
                    {
                        "metadata": {"name": "kube-dispatcher-token-reviews"},
                        "roleRef": {
                            "apiGroup": "rbac.authorization.k8s.io",
                            "kind": "ClusterRole",
                            "name": "system:auth-delegator",
                        },
                        "subjects": [
                            {
                                "kind": "ServiceAccount",
                                "name": DISPATCHER_SA,
                                "namespace": DISPATCHER_NAMESPACE,
                            }
                        ],
                    }
                )
            except ApiException as exc:
                if exc.status != 409:  # already there
                    raise

    def grant_task_namespace(self, cluster: ClusterSpec | str, namespace: str) -> None:
        """Let the cluster's dispatcher identity manage pods in ``namespace`` (and, in
        ``plane``, keep job records there)."""
        from kubernetes import client

        spec = self._spec(cluster)
        if spec.name == "plane":
            self._bind_records(spec, namespace)
        sa_ns = DISPATCHER_NAMESPACE if spec.name == "plane" else TASK_NAMESPACE
        sa_name = DISPATCHER_SA if spec.name == "plane" else RESTRICTED_SA
        with self.kube(spec) as api:
            client.RbacAuthorizationV1Api(api).create_namespaced_role_binding(
                namespace,
                {
                    "metadata": {"name": "kube-dispatcher-tasks"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": "kube-dispatcher-tasks",
                    },
                    "subjects": [{"kind": "ServiceAccount", "name": sa_name, "namespace": sa_ns}],
                },
            )

    def _bound_token(self, spec: ClusterSpec, namespace: str, sa_name: str, generation: int) -> str:
        """A ServiceAccount token bound to a Secret: deleting the Secret revokes it."""
        from kubernetes import client

        with self.kube(spec) as api:
            core = client.CoreV1Api(api)
            secret = core.create_namespaced_secret(
                namespace,
                {"metadata": {"name": f"{sa_name}-credential-{generation}"}, "type": "Opaque"},
            )
            request = core.create_namespaced_service_account_token(
                sa_name,
                namespace,
                {
                    "spec": {
                        "audiences": [],
                        "expirationSeconds": 7 * 24 * 3600,
                        "boundObjectRef": {
                            "apiVersion": "v1",
                            "kind": "Secret",
                            "name": secret.metadata.name,
                            "uid": secret.metadata.uid,
                        },
                    }
                },
            )
            return str(request.status.token)

    def service_account_token(
        self,
        cluster: ClusterSpec | str,
        namespace: str,
        name: str,
        seconds: int = 3600,
        audiences: list[str] | None = None,
    ) -> str:
        """A fresh token for a ServiceAccount through the TokenRequest API."""
        from kubernetes import client

        with self.kube(cluster) as api:
            body: dict[str, Any] = {"spec": {"expirationSeconds": seconds}}
            if audiences:
                body["spec"]["audiences"] = audiences
            request = client.CoreV1Api(api).create_namespaced_service_account_token(
                name, namespace, body
            )
            return str(request.status.token)

    def rotate_restricted_credential(self, cluster: ClusterSpec | str) -> str:
        """Issue a new restricted token, store the new kubeconfig in Vault, revoke the old token.

        Returns the new token (for assertions); the old one stops working at once.
        """
        import hvac
        from kubernetes import client

        spec = self._spec(cluster)
        generations = self.state_dir / f"{spec.name}-credential-generation"
        current = int(generations.read_text()) if generations.is_file() else 1
        token = self._bound_token(spec, TASK_NAMESPACE, RESTRICTED_SA, generation=current + 1)
        conf = kubeconfig_dict(
            spec.name,
            self.server(spec),
            Pki(self.state_dir / "pki").ca_pem(),
            token,
            namespace=TASK_NAMESPACE,
        )
        vault = hvac.Client(url=self.vault_addr, token=VAULT_ROOT_TOKEN)
        vault.secrets.kv.v2.create_or_update_secret(
            path=f"clusters/{spec.name}",
            mount_point=VAULT_KV_MOUNT,
            secret=self._kv_record(spec, conf),
        )
        with self.kube(spec) as api:
            client.CoreV1Api(api).delete_namespaced_secret(
                f"{RESTRICTED_SA}-credential-{current}", TASK_NAMESPACE
            )
        generations.write_text(str(current + 1))
        # A restarted (dev mode) Vault is refilled from this file: keep it current.
        path = self.state_dir / "kubeconfigs" / f"{spec.name}-restricted.yaml"
        path.write_text(yaml.safe_dump(conf))
        return token

    def create_nodes(
        self, cluster: ClusterSpec | str, pools: tuple[NodePool, ...] | None = None
    ) -> list[str]:
        """Create simulated nodes (KWOK makes them Ready); returns their names."""
        from kubernetes import client

        spec = self._spec(cluster)
        manifests = []
        for pool in pools or spec.pools:
            for i in range(pool.count):
                manifests.append(node_manifest(spec, pool, i))
        with self.kube(spec) as api:
            core = client.CoreV1Api(api)
            with ThreadPoolExecutor(max_workers=8) as workers:
                list(workers.map(core.create_node, manifests))
        return [m["metadata"]["name"] for m in manifests]

    def _wait_nodes_ready(self, timeout: float = 60) -> None:
        from kubernetes import client

        for spec in self.clusters:
            expected = sum(p.count for p in spec.pools)

            def ready(spec: ClusterSpec = spec, expected: int = expected) -> bool:
                with self.kube(spec) as api:
                    nodes = client.CoreV1Api(api).list_node().items
                count = 0
                for node in nodes:
                    for cond in node.status.conditions or []:
                        if cond.type == "Ready" and cond.status == "True":
                            count += 1
                return count >= expected

            self._wait(f"{spec.name}-kwok", ready, timeout)

    # ----- Vault --------------------------------------------------------------------
    def _kv_record(self, spec: ClusterSpec, conf: dict[str, Any]) -> dict[str, str]:
        return {
            "kubeconfig": yaml.safe_dump(conf),
            "server": self.server(spec),
            "ca": Pki(self.state_dir / "pki").ca_pem(),
        }

    def configure_vault(self) -> None:
        """Configure a (fresh, in-memory) Vault; idempotent so a restarted dev server matches."""
        import hvac

        env = self.env()
        pki = Pki(self.state_dir / "pki")
        vault = hvac.Client(url=self.vault_addr, token=VAULT_ROOT_TOKEN)
        for name, path in env.vault.kv_paths.items():
            conf = yaml.safe_load(Path(env.clusters[name].restricted_kubeconfig).read_text())
            vault.secrets.kv.v2.create_or_update_secret(
                path=path,
                mount_point=VAULT_KV_MOUNT,
                secret=self._kv_record(self._spec(name), conf),
            )
        vault.sys.create_or_update_policy(
            VAULT_POLICY,
            VAULT_POLICY_HCL.format(kv=VAULT_KV_MOUNT, k8s=env.vault.kubernetes_secrets_mount),
        )
        auths = vault.sys.list_auth_methods()
        if f"{VAULT_KUBE_AUTH_MOUNT}/" not in auths:
            vault.sys.enable_auth_method("kubernetes", path=VAULT_KUBE_AUTH_MOUNT)
        reviewer = self.service_account_token(
            "plane", "kube-system", "vault-auth", seconds=30 * 24 * 3600
        )
        vault.write(
            f"auth/{VAULT_KUBE_AUTH_MOUNT}/config",
            kubernetes_host=self.server("plane"),
            kubernetes_ca_cert=pki.ca_pem(),
            token_reviewer_jwt=reviewer,
            disable_local_ca_jwt=True,
        )
        vault.write(
            f"auth/{VAULT_KUBE_AUTH_MOUNT}/role/{VAULT_ROLE}",
            bound_service_account_names=[DISPATCHER_SA],
            bound_service_account_namespaces=[DISPATCHER_NAMESPACE],
            token_policies=[VAULT_POLICY],
            token_ttl="1h",
            token_max_ttl="24h",
        )
        if f"{VAULT_APPROLE_MOUNT}/" not in auths:
            vault.sys.enable_auth_method("approle", path=VAULT_APPROLE_MOUNT)
        vault.write(
            f"auth/{VAULT_APPROLE_MOUNT}/role/{VAULT_ROLE}",
            token_policies=[VAULT_POLICY],
            token_ttl="1h",
            token_max_ttl="24h",
            secret_id_ttl="0",
        )
        vault.write(
            f"auth/{VAULT_APPROLE_MOUNT}/role/{VAULT_ROLE}/role-id", role_id=APPROLE_ROLE_ID
        )
        existing = vault.list(f"auth/{VAULT_APPROLE_MOUNT}/role/{VAULT_ROLE}/secret-id")
        if not existing:
            vault.write(
                f"auth/{VAULT_APPROLE_MOUNT}/role/{VAULT_ROLE}/custom-secret-id",
                secret_id=APPROLE_SECRET_ID,
            )
        mounts = vault.sys.list_mounted_secrets_engines()
        mount = env.vault.kubernetes_secrets_mount
        if f"{mount}/" not in mounts:
            vault.sys.enable_secrets_engine("kubernetes", path=mount)
        minter = self.service_account_token(
            "gpu-h100", "kube-system", "vault-secrets", seconds=30 * 24 * 3600
        )
        vault.write(
            f"{mount}/config",
            kubernetes_host=self.server("gpu-h100"),
            kubernetes_ca_cert=pki.ca_pem(),
            service_account_jwt=minter,
            disable_local_ca_jwt=True,
        )
        vault.write(
            f"{mount}/roles/{env.vault.kubernetes_secrets_role}",
            allowed_kubernetes_namespaces=[TASK_NAMESPACE],
            service_account_name=RESTRICTED_SA,
            # The apiserver refuses TokenRequests shorter than 10 minutes.
            token_default_ttl="10m",
            token_max_ttl="1h",
        )

    def _write_env(self, pki: Pki, admin_token: str, restricted: dict[str, str]) -> StackEnv:
        clusters = {}
        for spec in self.clusters:
            clusters[spec.name] = ClusterEnv(
                name=spec.name,
                server=self.server(spec),
                region=spec.region,
                ca_file=str(pki.ca_cert),
                admin_token=admin_token,
                admin_kubeconfig=str(self.admin_kubeconfig(spec)),
                restricted_kubeconfig=restricted[spec.name],
                nodes=[node_name(spec, p, i) for p in spec.pools for i in range(p.count)],
            )
        env = StackEnv(
            state_dir=str(self.state_dir),
            ca_file=str(pki.ca_cert),
            clusters=clusters,
            vault=VaultEnv(
                addr=self.vault_addr,
                root_token=VAULT_ROOT_TOKEN,
                kv_mount=VAULT_KV_MOUNT,
                kv_paths={s.name: f"clusters/{s.name}" for s in self.clusters if s.name != "plane"},
                kubernetes_auth_mount=VAULT_KUBE_AUTH_MOUNT,
                kubernetes_auth_role=VAULT_ROLE,
                approle_mount=VAULT_APPROLE_MOUNT,
                approle_role_id=APPROLE_ROLE_ID,
                approle_secret_id=APPROLE_SECRET_ID,
                kubernetes_secrets_mount="kubernetes-gpu-h100",
                kubernetes_secrets_role="dispatcher",
                policy=VAULT_POLICY,
            ),
        )
        self.env_file.write_text(json.dumps(asdict(env), indent=2))
        self.env_file.chmod(0o600)
        return env

    # ----- faults -------------------------------------------------------------------
    def stop_apiserver(self, cluster: ClusterSpec | str) -> None:
        self._kill(f"{self._spec(cluster).name}-apiserver")

    def start_apiserver(self, cluster: ClusterSpec | str, timeout: float = 60) -> None:
        spec = self._spec(cluster)
        self._start_apiserver(spec)
        self._wait(f"{spec.name}-apiserver", lambda: self._apiserver_ready(spec), timeout)
        # The scheduler and KWOK back off for a minute or more after losing their
        # apiserver; restart them so the cluster works again at once, as after a real
        # control-plane restart.
        for part, start in (("scheduler", self._start_scheduler), ("kwok", self._start_kwok)):
            self._kill(f"{spec.name}-{part}")
            start(spec)

    def stop_vault(self) -> None:
        self._kill("vault")

    def start_vault(self) -> None:
        """Start Vault again; dev mode keeps nothing, so it is configured anew (tokens issued
        before the restart are gone, as after a real Vault's storage loss)."""
        self._start_vault()
        self._wait("vault", self._vault_ready, 60)
        self.configure_vault()

    def append_container_log(self, cluster: ClusterSpec | str, lines: list[str]) -> None:
        """Append lines to the log every container of ``cluster`` serves (follow tests)."""
        with self.container_log_file(self._spec(cluster).name).open("a") as log:
            log.write(_cri_lines(lines))


TASK_RULES = [
    {
        "apiGroups": [""],
        "resources": ["pods"],
        "verbs": ["get", "list", "watch", "create", "delete", "patch"],
    },
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
    # Job records and the leader Lease: tests keep each dispatcher's apart. ConfigMaps are
    # watched too: routing's view of a task's dependencies (names and key names).
    {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "verbs": ["get", "list", "watch", "create", "update", "delete"],
    },
    # Routing's view of a task's dependencies (``check_dependencies``): the dispatcher keeps
    # names and key names only, but RBAC cannot grant a list of Secrets without values.
    # Secrets are also read (a copy's source, in ``plane``) and created, updated and
    # deleted (its copies, in GPU clusters: ``copy_dependencies``, ``registries``).
    {
        "apiGroups": [""],
        "resources": ["secrets"],
        "verbs": ["get", "list", "watch", "create", "update", "delete"],
    },
    {
        "apiGroups": [""],
        "resources": ["persistentvolumeclaims", "serviceaccounts"],
        "verbs": ["list", "watch"],
    },
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "verbs": ["get", "create", "update"],
    },
]

#: Job records in `plane` (the chart's state Role grants the same): DispatchJobs, their
#: status, and the Secrets holding their literal env values.
RECORDS_RULES = [
    {
        "apiGroups": ["kube-dispatcher.dev"],
        "resources": ["dispatchjobs"],
        "verbs": ["get", "list", "create", "update", "delete"],
    },
    {
        "apiGroups": ["kube-dispatcher.dev"],
        "resources": ["dispatchjobs/status"],
        "verbs": ["update", "patch"],
    },
    {
        "apiGroups": [""],
        "resources": ["secrets"],
        "verbs": ["get", "list", "create", "update", "delete"],
    },
]

VAULT_POLICY_HCL = """
path "{kv}/data/clusters/*" {{ capabilities = ["read"] }}
path "{kv}/metadata/clusters/*" {{ capabilities = ["read", "list"] }}
path "{kv}/data/registries/*" {{ capabilities = ["read"] }}
path "{kv}/data/dependencies/*" {{ capabilities = ["read"] }}
path "{k8s}/creds/*" {{ capabilities = ["update"] }}
path "sys/leases/revoke/{k8s}/creds/*" {{ capabilities = ["update"] }}
"""


def node_name(spec: ClusterSpec, pool: NodePool, i: int) -> str:
    return f"{pool.prefix}-{i}"


def node_manifest(spec: ClusterSpec, pool: NodePool, i: int) -> dict[str, Any]:
    name = node_name(spec, pool, i)
    labels = {
        "type": "kwok",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": pool.instance_type,
        "topology.kubernetes.io/region": spec.region,
        "topology.kubernetes.io/zone": f"{spec.region}a",
    }
    resources = {"cpu": pool.cpu, "memory": pool.memory, "pods": "110", "ephemeral-storage": "1Ti"}
    if pool.gpus:
        resources["nvidia.com/gpu"] = str(pool.gpus)
        labels["nvidia.com/gpu.present"] = "true"
        labels["nvidia.com/gpu.count"] = str(pool.gpus)
        if pool.gpu_product:
            labels["nvidia.com/gpu.product"] = pool.gpu_product
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {
                KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1],
                "node.alpha.kubernetes.io/ttl": "0",
            },
        },
        "spec": {"taints": [GPU_TAINT] if pool.tainted else []},
        "status": {"capacity": resources, "allocatable": resources},
    }


def _cri_lines(lines: list[str]) -> str:
    """Lines in the CRI log format that KWOK serves (timestamp stream tag message)."""
    now = time.time()
    out = []
    for i, line in enumerate(lines):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{i:09d}Z"
        out.append(f"{stamp} stdout F {line}\n")
    return "".join(out)


@contextlib.contextmanager
def running_stack(**kwargs: Any) -> Iterator[Stack]:
    """Bring the stack up for the block; stop it after unless it was already up."""
    stack = Stack(**kwargs)
    was_up = stack.is_up()
    stack.up()
    try:
        yield stack
    finally:
        if not was_up and os.environ.get("KD_STACK_KEEP") != "1":
            stack.down()
