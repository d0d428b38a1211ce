"""A real Prometheus server for tests: temporary config, storage and port; HTTP API helpers.

``PrometheusServer`` writes a config that scrapes one target every second and evaluates the
given rule files every second, starts ``prometheus`` on ``127.0.0.1:<free port>`` with its
TSDB in a temporary directory, and reads the HTTP API (``/api/v1/query``, ``/targets``,
``/alerts``). ``shortened_rules`` copies a rule file with every ``for:`` duration rewritten
and nothing else changed, so shipped expressions can be exercised in seconds.

I/O: runs the ``prometheus`` binary, HTTP to it, writes files under the given directory.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support import LocalProcess

__all__ = [
    "PrometheusServer",
    "shortened_rules",
]

_FOR = re.compile(r"^(?P<indent>\s+)for:\s*(?P<duration>\S+)\s*$", re.MULTILINE)


def shortened_rules(source: Path, dest: Path, duration: str) -> Path:
    """Copy ``source`` to ``dest`` with every alert's ``for:`` set to ``duration``.

    The rewrite is textual, line by line, so expressions, labels and annotations stay byte
    for byte as shipped; it is checked by comparing both files parsed, ``for`` aside.
    """
    text = source.read_text(encoding="utf-8")
    shortened, count = _FOR.subn(rf"\g<indent>for: {duration}", text)
    assert count, f"{source}: no `for:` to shorten"
    original = yaml.safe_load(text)
    changed = yaml.safe_load(shortened)
    rules = [rule for group in changed["groups"] for rule in group["rules"]]
    assert all(rule.get("for") == duration for rule in rules if "alert" in rule)
    for group in (*original["groups"], *changed["groups"]):
        for rule in group["rules"]:
            rule.pop("for", None)
    assert original == changed, "shortening `for:` changed something else in the rules"
    dest.write_text(shortened, encoding="utf-8")
    return dest


class PrometheusServer(LocalProcess):
    """One Prometheus process scraping ``target`` (``host:port``) with ``rule_files``."""

    def __init__(
        self,
        binary: str,
        workdir: Path,
        *,
        target: str,
        rule_files: list[Path],
        target_labels: dict[str, str] | None = None,
        job: str = "kube-dispatcher",
        interval: str = "1s",
    ) -> None:
        super().__init__(workdir / "prometheus.log")
        self.binary = binary
        self.workdir = workdir
        self.target = target
        self.job = job
        self.config = workdir / "prometheus.yml"
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [
                {
                    "job_name": job,
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": [target], "labels": target_labels or {}}],
                }
            ],
        }
        self.config.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    # ----- process -----------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - our own binary and arguments
                [
                    self.binary,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=info",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready after {timeout}s:\n{self.tail()}")

    # ----- HTTP API ----------------------------------------------------------------------
    def api(self, path: str, **params: str) -> Any:
        """``data`` of a successful ``/api/v1/<path>`` answer."""
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert response.status_code == 200, f"GET /api/v1/{path} {params}: {body}"
        assert body.get("status") == "success", f"GET /api/v1/{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant vector result of ``expr``: ``[{"metric": {...}, "value": [t, "v"]}]``."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: {data['resultType']}, not a vector"
        return list(data["result"])

    def value(self, expr: str) -> float | None:
        """The single value of ``expr`` (None when the result is empty)."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr}: {len(result)} series, expected one: {result}"
        return float(result[0]["value"][1]) if result else None

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])

    def scrape_target(self) -> dict[str, Any] | None:
        """This server's scrape target, once Prometheus has discovered it."""
        for target in self.targets():
            if target["labels"].get("job") == self.job:
                return target
        return None

    def alerts(self, name: str | None = None) -> list[dict[str, Any]]:
        """Active (pending or firing) alerts, optionally only those named ``name``."""
        alerts = list(self.api("alerts")["alerts"])
        return [a for a in alerts if name is None or a["labels"]["alertname"] == name]
