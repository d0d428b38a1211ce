"""Build the test stack's Go binaries, cached by content outside the clone.

Each component is a small Go module under ``tests/stack/go/<name>``. Its binaries are
cached in ``$KD_STACK_CACHE`` (default ``~/.cache/kube-dispatcher/stack``) under a key
made of everything that decides the build (go.mod, go.sum, Go sources, Go version,
flags and build tags), so a warm build does nothing and a change rebuilds only what changed.

This module does I/O: it runs ``go build`` and writes the cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

GO_DIR = Path(__file__).resolve().parent / "go"
KUBERNETES_VERSION = "v1.35.4"
#: github.com/prometheus/prometheus v0.316.0 is Prometheus 3.16.0 (the module's VERSION file).
PROMETHEUS_VERSION = "3.16.0"
PROMETHEUS_MODULE_VERSION = "v0.316.0"


@dataclass(frozen=True)
class Component:
    """One Go module and the binaries it yields (output name -> package path)."""

    module: str
    binaries: dict[str, str]
    ldflags: str = "-s -w"
    tags: tuple[str, ...] = ()


COMPONENTS: tuple[Component, ...] = (
    Component(
        module="k8s",
        binaries={
            "kube-apiserver": "./cmd/kube-apiserver",
            "kube-scheduler": "./cmd/kube-scheduler",
        },
        # kube-apiserver reports this in /version; clients compare it.
        ldflags=(
            "-s -w"
            f" -X k8s.io/component-base/version.gitVersion={KUBERNETES_VERSION}"
            " -X k8s.io/component-base/version.gitMajor=1"
            " -X k8s.io/component-base/version.gitMinor=35"
        ),
    ),
    Component(module="etcd", binaries={"etcd": "."}),
    Component(module="kwok", binaries={"kwok": "sigs.k8s.io/kwok/cmd/kwok"}),
    Component(module="vault", binaries={"vault": "."}),
    Component(module="helm", binaries={"helm": "helm.sh/helm/v3/cmd/helm"}),
    Component(
        module="prometheus",
        binaries={
            "prometheus": "github.com/prometheus/prometheus/cmd/prometheus",
            "promtool": "github.com/prometheus/prometheus/cmd/promtool",
        },
        # As the module's .promu.yml builds them, less the `builtinassets` tag: the web UI
        # is not embedded (the tests use the HTTP API only), so nothing needs Node.js.
        tags=("netgo",),
        # The proxy's zip carries no commit, so the revision is the module version.
        ldflags=(
            "-s -w"
            f" -X github.com/prometheus/common/version.Version={PROMETHEUS_VERSION}"
            f" -X github.com/prometheus/common/version.Revision={PROMETHEUS_MODULE_VERSION}"
        ),
    ),
)


def cache_root() -> Path:
    default = Path.home() / ".cache" / "kube-dispatcher" / "stack"
    return Path(os.environ.get("KD_STACK_CACHE", str(default)))


def _go_version() -> str:
    try:
        out = subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(
            f"stack build: the `go` command is needed to build the stack: {exc}"
        ) from exc
    return out.stdout.strip()


def _key(component: Component, go_version: str) -> str:
    digest = hashlib.sha256()
    digest.update(go_version.encode())
    digest.update(component.ldflags.encode())
    if component.tags:  # only then: adding the field kept the other components' keys
        digest.update(repr(component.tags).encode())
    digest.update(repr(sorted(component.binaries.items())).encode())
    src = GO_DIR / component.module
    for path in sorted(src.rglob("*")):
        if path.is_file() and (path.suffix == ".go" or path.name in {"go.mod", "go.sum"}):
            digest.update(str(path.relative_to(src)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def component_dir(component: Component, go_version: str | None = None) -> Path:
    return cache_root() / f"{component.module}-{_key(component, go_version or _go_version())}"


def binary_paths() -> dict[str, Path]:
    """Where every stack binary lives in the cache (built or not)."""
    go_version = _go_version()
    paths: dict[str, Path] = {}
    for component in COMPONENTS:
        folder = component_dir(component, go_version)
        for name in component.binaries:
            paths[name] = folder / name
    return paths


class NotBuiltError(RuntimeError):
    """A stack binary is not in the cache; the message says which and how to build it."""


def built_binary(name: str) -> Path:
    """Where the stack binary ``name`` is in the cache; raises ``NotBuiltError`` if it is not
    built. Never looks on PATH: tests run the versions pinned here, not the machine's."""
    path = binary_paths()[name]
    if not path.is_file():
        raise NotBuiltError(not_built(name, path))
    return path


def not_built(name: str, path: Path) -> str:
    return (
        f"`{name}` is not built (looked for {path}): run `make stack-build`"
        " (or `python -m tests.stack build`)"
    )


def build(only: list[str] | None = None, out: TextIO = sys.stderr) -> dict[str, Path]:
    """Build every missing binary; return name -> path. Prints progress to ``out``."""
    go_version = _go_version()
    paths: dict[str, Path] = {}
    env = {**os.environ, "CGO_ENABLED": "0"}
    for component in COMPONENTS:
        if only and component.module not in only:
            continue
        folder = component_dir(component, go_version)
        missing = [name for name in component.binaries if not (folder / name).is_file()]
        for name in component.binaries:
            paths[name] = folder / name
        if not missing:
            continue
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in missing:
            print(
                f"stack build: {name} ({component.module}, {go_version}) ...", file=out, flush=True
            )
            started = time.monotonic()
            cmd = [
                "go",
                "build",
                "-trimpath",
                f"-ldflags={component.ldflags}",
                *([f"-tags={','.join(component.tags)}"] if component.tags else []),
                "-o",
                str(tmp / name),
                component.binaries[name],
            ]
            proc = subprocess.run(
                cmd,
                cwd=GO_DIR / component.module,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise SystemExit(
                    f"stack build: building {name} failed (exit {proc.returncode}):\n"
                    + proc.stderr[-4000:]
                )
            print(
                f"stack build: {name} built in {time.monotonic() - started:.0f}s",
                file=out,
                flush=True,
            )
        folder.mkdir(parents=True, exist_ok=True)
        for name in missing:
            os.replace(tmp / name, folder / name)
        shutil.rmtree(tmp, ignore_errors=True)
    return paths
