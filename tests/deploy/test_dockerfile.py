"""The container image: lint-clean, built from files that exist and reach the build context,
locked down at runtime, and its install steps really produce a working `dispatcher`.

No container engine is available, so the builder stage's RUN steps are replayed in a
temporary directory and virtual environment instead of a container.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .support import REPO, copies, dockerignore_rules, excluded, files_under, parse_dockerfile, run

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def test_dockerfile_passes_hadolint(hadolint: str) -> None:
    config = REPO / ".hadolint.yaml"
    cmd = [hadolint, "--failure-threshold", "info"]
    if config.is_file():
        cmd += ["--config", str(config)]
    run([*cmd, str(DOCKERFILE)])


def test_every_copied_path_exists_and_reaches_the_build_context() -> None:
    dockerfile = parse_dockerfile(DOCKERFILE)
    rules = dockerignore_rules(DOCKERIGNORE)
    context_copies = [c for stage in dockerfile.stages for c in copies(stage) if not c.from_stage]
    assert context_copies, "the Dockerfile copies nothing from the build context"
    for copy in context_copies:
        for source in copy.sources:
            path = REPO / source
            assert path.exists(), f"COPY {source}: no such file or directory in the repository"
            shipped = [
                f for f in files_under(path) if not excluded(f.relative_to(REPO).as_posix(), rules)
            ]
            assert shipped, f"COPY {source}: .dockerignore leaves all of it out of the context"
            # Everything but bytecode under a copied source reaches the build.
            for file in files_under(path):
                rel = file.relative_to(REPO).as_posix()
                if "__pycache__" in rel or rel.endswith(".pyc"):
                    assert excluded(rel, rules), f"{rel} would be shipped in the image"
                else:
                    assert not excluded(rel, rules), f"COPY {source}: {rel} is dockerignored"


@pytest.mark.parametrize(
    "path",
    [".git/HEAD", ".venv/bin/python", ".stack/env.json", "tests/conftest.py", "deploy/README.md"],
)
def test_build_context_leaves_out_local_state_and_tests(path: str) -> None:
    assert excluded(path, dockerignore_rules(DOCKERIGNORE))


def test_both_stages_use_the_same_pinned_slim_python() -> None:
    dockerfile = parse_dockerfile(DOCKERFILE)
    assert [s.name for s in dockerfile.stages] == ["builder", "runtime"]
    bases = {dockerfile.args.get(s.base.strip("${}"), s.base) for s in dockerfile.stages}
    assert len(bases) == 1, f"stages use different bases {bases}: the venv would not run"
    image = bases.pop()
    # An exact patch release of 3.11 or 3.12, slim, on a named Debian release.
    assert re.fullmatch(r"python:3\.1[12]\.\d+-slim-(bookworm|trixie)", image), image


def test_runtime_stage_runs_unprivileged_on_a_read_only_root() -> None:
    dockerfile = parse_dockerfile(DOCKERFILE)
    builder, runtime = dockerfile.stage("builder"), dockerfile.stage("runtime")
    env = runtime.env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["HOME"] == "/tmp"
    venv = builder.env()["VIRTUAL_ENV"]
    assert env["PATH"].startswith(f"{venv}/bin:")
    # Only the virtual environment comes from the builder; nothing from the context.
    assert [(c.from_stage, c.sources, c.dest) for c in copies(runtime)] == [
        ("builder", (venv,), venv)
    ]
    users = runtime.all("USER")
    assert users, "the runtime stage must set USER"
    assert re.fullmatch(r"10001(:10001)?", users[-1].value), "run as numeric UID 10001"
    assert runtime.all("HEALTHCHECK") == [], "health is for Kubernetes probes"
    assert [i.value for i in runtime.all("EXPOSE")] == ["8080"]
    assert runtime.all("ENTRYPOINT")[-1].exec_form() == ["dispatcher"]
    assert runtime.all("CMD")[-1].exec_form() == ["serve"]
    run_steps = " ".join(i.value for i in runtime.all("RUN"))
    assert "apt-get install" not in run_steps, "no packages (or build tools) in the runtime"


def _python_shim(folder: Path) -> Path:
    """A `python` that is this interpreter, so the replay does not depend on PATH."""
    folder.mkdir()
    shim = folder / "python"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    return folder


@pytest.mark.slow
def test_builder_steps_install_a_working_dispatcher_in_a_clean_venv(tmp_path: Path) -> None:
    """Replays the builder stage: its COPYs into a fresh WORKDIR, its ENV (with the venv
    moved under tmp_path), and its RUN steps through /bin/sh like Docker does."""
    builder = parse_dockerfile(DOCKERFILE).stage("builder")
    workdir = tmp_path / "src"
    workdir.mkdir()
    for copy in copies(builder):
        for source in copy.sources:
            origin, dest = REPO / source, workdir / copy.dest
            if origin.is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                shutil.copytree(origin, dest, ignore=ignore, dirs_exist_ok=True)
            else:
                if copy.dest.endswith("/"):
                    dest.mkdir(parents=True, exist_ok=True)
                    dest = dest / origin.name
                shutil.copy2(origin, dest)
    venv = tmp_path / "venv"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV", "DISPATCHER_"))
    }
    env.update(builder.env())
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{_python_shim(tmp_path / 'shim')}:/usr/bin:/bin"
    for step in builder.all("RUN"):
        for absolute in ("/opt/", "/src"):
            assert absolute not in step.value, (
                f"keep RUN steps relocatable (WORKDIR-relative or $VIRTUAL_ENV): {step.value}"
            )
        run(["/bin/sh", "-c", step.value], cwd=workdir, env=env, timeout=900)

    dispatcher = venv / "bin" / "dispatcher"
    assert dispatcher.is_file(), "the builder did not install the `dispatcher` script"
    assert not (venv / "bin" / "pip").exists(), "pip must not be in the shipped venv"
    clean_env = {"PATH": f"{venv}/bin:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    proc = subprocess.run(  # noqa: S603 - the script the builder installed
        [str(dispatcher), "--help"],
        capture_output=True,
        text=True,
        env=clean_env,
        cwd=tmp_path,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout
    # The image's CMD names a real subcommand.
    proc = subprocess.run(  # noqa: S603 - the script the builder installed
        [str(dispatcher), "serve", "--help"],
        capture_output=True,
        text=True,
        env=clean_env,
        cwd=tmp_path,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
