"""Helpers for the deployment tests: tools, Dockerfile and .dockerignore parsing, Helm
rendering, the metrics the dispatcher exports, and a small PromQL scanner.

I/O: runs external tools (helm, promtool, hadolint) and reads repository files.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "kube-dispatcher"
RULES = DEPLOY / "prometheus" / "rules.yaml"
RULE_TESTS = DEPLOY / "prometheus" / "tests"
DASHBOARD = DEPLOY / "grafana" / "kube-dispatcher.json"
VALUES_DIR = Path(__file__).resolve().parent / "values"
CRDS_DIR = Path(__file__).resolve().parent / "crds"
#: The chart's own CRD (job records) and the fencing policy it renders from a file.
RECORDS_CRD = CHART / "crds" / "dispatchjobs.yaml"
FENCING = CHART / "files" / "fencing.yaml"

#: The namespace the chart is rendered into (it must exist in the stack's `plane`).
RELEASE = "kd"
RELEASE_NAMESPACE = "kd-deploy"
MONITORING_API = "monitoring.coreos.com/v1"


# ----------------------------------------------------------------------------- tools


def find_tool(name: str, install_hint: str) -> str:
    """Path of ``name`` on PATH or next to the interpreter; fails the test if missing."""
    beside = Path(sys.executable).parent / name
    path = shutil.which(name) or (str(beside) if beside.is_file() else None)
    if path is None:
        pytest.fail(f"`{name}` is not installed: {install_hint}", pytrace=False)
    return path


def run(cmd: Sequence[str | Path], *, cwd: Path | None = None, **kwargs: Any) -> str:
    """Run ``cmd``; on failure, fail the test with its output. Returns stdout."""
    proc = subprocess.run(  # noqa: S603 - our own tools, argument lists
        [str(c) for c in cmd],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        check=False,
        **kwargs,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"`{shlex.join(str(c) for c in cmd)}` failed (exit {proc.returncode}):\n"
            f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}",
            pytrace=False,
        )
    return proc.stdout


# ----------------------------------------------------------------------------- Dockerfile


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    value: str  # the rest of the instruction, continuation lines joined

    def words(self) -> list[str]:
        return shlex.split(self.value)

    def exec_form(self) -> list[str] | None:
        """The JSON (exec) form of CMD/ENTRYPOINT, or None for the shell form."""
        try:
            parsed = json.loads(self.value)
        except ValueError:
            return None
        return parsed if isinstance(parsed, list) else None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """ENV key=value pairs in order (later ones win)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in instruction.words():
                key, _, value = word.partition("=")
                values[key] = value
        return values


@dataclass
class Dockerfile:
    args: dict[str, str]  # ARGs before the first FROM, with their defaults
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage named {name!r}")


def parse_dockerfile(path: Path) -> Dockerfile:
    """Enough of the Dockerfile grammar for our own file: comments, continuations, stages."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") and not pending:
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line = (pending + stripped).strip()
        pending = ""
        if line:
            logical.append(line)
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, value = line.partition(" ")
        instruction = Instruction(keyword.upper(), value.strip())
        if instruction.keyword == "FROM":
            words = instruction.words()
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            if instruction.keyword == "ARG":
                key, _, default = instruction.value.partition("=")
                args[key] = default
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(args=args, stages=stages)


@dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]
    dest: str
    from_stage: str | None


def copies(stage: Stage) -> list[Copy]:
    result = []
    for instruction in stage.all("COPY"):
        words = instruction.words()
        from_stage = None
        options = [w for w in words if w.startswith("--")]
        for option in options:
            if option.startswith("--from="):
                from_stage = option.split("=", 1)[1]
        paths = [w for w in words if not w.startswith("--")]
        result.append(Copy(tuple(paths[:-1]), paths[-1], from_stage))
    return result


# ----------------------------------------------------------------------------- .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regular expression."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"  # any number of directories, none included
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "[" and "]" in pattern[i:]:
            end = pattern.index("]", i)
            out += pattern[i : end + 1]  # a character class, same syntax as Go's
            i = end + 1
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def dockerignore_rules(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) for every pattern, in order."""
    rules = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line[1:].strip() if exception else line
        pattern = str(Path(pattern)) if pattern not in ("*", "**") else pattern
        rules.append((exception, _pattern_regex(pattern.lstrip("/"))))
    return rules


def excluded(relpath: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves ``relpath`` out of the build context (the last match wins;
    a pattern matching a parent directory matches everything below it)."""
    parts = relpath.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for exception, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            verdict = not exception
    return verdict


def files_under(path: Path) -> Iterable[Path]:
    if path.is_file():
        yield path
        return
    for child in sorted(path.rglob("*")):
        if child.is_file():
            yield child


# ----------------------------------------------------------------------------- Helm


def helm_template(
    helm: str,
    *,
    values: Sequence[Path] = (),
    set_values: Sequence[str] = (),
    api_versions: Sequence[str] = (),
    expect_failure: bool = False,
    include_crds: bool = False,
) -> Any:
    """Render the chart; returns the objects (or, with ``expect_failure``, the error text)."""
    from tests.stack.build import KUBERNETES_VERSION

    cmd = [
        helm,
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        RELEASE_NAMESPACE,
        "--kube-version",
        KUBERNETES_VERSION,
    ]
    for path in values:
        cmd += ["--values", str(path)]
    for item in set_values:
        cmd += ["--set", item]
    for api in api_versions:
        cmd += ["--api-versions", api]
    if include_crds:
        cmd.append("--include-crds")
    if expect_failure:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
        assert proc.returncode != 0, f"helm template should have failed:\n{proc.stdout}"
        return proc.stderr
    return [doc for doc in yaml.safe_load_all(run(cmd)) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def rendered_settings(objects: list[dict[str, Any]]) -> str:
    return one(objects, "ConfigMap")["data"]["config.yaml"]


# ----------------------------------------------------------------------------- metrics

#: Labels Prometheus (or a ServiceMonitor) adds to every scraped series.
TARGET_LABELS = frozenset(
    {"namespace", "pod", "instance", "job", "service", "endpoint", "container"}
)

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "gauge": ("",),
    "stateset": ("",),
    "unknown": ("",),
}


def exported_metrics() -> dict[str, frozenset[str]]:
    """Every series name ``dispatcher.metrics.REGISTRY`` exports -> its label names."""
    import prometheus_client

    from dispatcher import metrics

    declared: dict[str, tuple[str, ...]] = {}
    for value in vars(metrics).values():
        if isinstance(value, prometheus_client.metrics.MetricWrapperBase):
            for family in value.describe():
                declared[family.name] = tuple(value._labelnames)
            if isinstance(value, prometheus_client.Info):
                declared[value._name] = tuple(value._labelnames)
    names: dict[str, frozenset[str]] = {}
    for family in metrics.REGISTRY.collect():
        labels = set(declared.get(family.name, ()))
        for sample in family.samples:
            labels.update(sample.labels)
        for suffix in _SUFFIXES[family.type]:
            extra = {"le"} if suffix == "_bucket" else set()
            names[family.name + suffix] = frozenset(labels | extra)
    return names


# ----------------------------------------------------------------------------- PromQL

_AGGREGATIONS = frozenset(
    {
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    }
)  # fmt: skip
_GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_KEYWORDS = _AGGREGATIONS | _GROUPING | {"bool", "and", "or", "unless", "offset", "inf", "nan"}
_TOKEN = re.compile(
    r"""(?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)"""
    r"|(?P<range>\[[^\]]*\])"
    r"|(?P<braces>\{[^}]*\})"
    r"|(?P<number>\d[\w.]*)"
    r"|(?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r"|(?P<space>\s+)"
    r"|(?P<other>.)",
    re.DOTALL,
)
_MATCHER = re.compile(r"""\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:\\.|[^"\\])*")\s*,?""")


@dataclass
class Selector:
    metric: str | None
    labels: dict[str, tuple[str, str]]  # label -> (operator, value)


@dataclass
class PromQLUse:
    selectors: list[Selector]
    grouping_labels: set[str]


def scan_promql(expr: str) -> PromQLUse:
    """Metric selectors and grouping labels of ``expr`` (a scanner, not a parser: promtool
    checks the syntax; this finds the names the expression depends on)."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr) if m.lastgroup != "space"]
    selectors: list[Selector] = []
    grouping: set[str] = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else (None, "")
        if kind == "ident" and text in _GROUPING and following[1] == "(":
            j = i + 2
            while j < len(tokens) and tokens[j][1] != ")":
                if tokens[j][0] == "ident":
                    grouping.add(tokens[j][1])
                j += 1
            i = j + 1
            continue
        if kind == "ident" and text not in _KEYWORDS and following[1] != "(":
            labels = {}
            if following[0] == "braces":
                labels = _matchers(following[1])
                i += 1
            selectors.append(Selector(text, labels))
        elif kind == "braces":
            selectors.append(Selector(None, _matchers(text)))
        i += 1
    return PromQLUse(selectors, grouping)


def _matchers(braces: str) -> dict[str, tuple[str, str]]:
    inner = braces[1:-1]
    found = {}
    pos = 0
    while pos < len(inner.strip()):
        match = _MATCHER.match(inner, pos)
        if not match:
            raise AssertionError(f"cannot read label matchers {braces!r}")
        found[match.group(1)] = (match.group(2), json.loads(match.group(3)))
        pos = match.end()
        if not inner[pos:].strip():
            break
    return found


def grafana_to_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced by values Prometheus accepts."""
    replaced = (
        expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$namespace", ".*")
        .replace("$cluster", ".*")
    )
    leftover = re.findall(r"\$\{?\w+", replaced)
    assert not leftover, f"unknown Grafana variables {leftover} in {expr!r}"
    label_values = re.fullmatch(r"label_values\((.*),\s*(\w+)\s*\)", replaced, re.DOTALL)
    if label_values:
        return label_values.group(1)
    return replaced


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expression) for every panel target and query variable."""
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found.append((f"variable {variable['name']}", variable["query"]["query"]))
    return found


def rule_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [
        (f"rule {rule.get('alert') or rule.get('record')}", rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    ]


def alerts() -> list[dict[str, Any]]:
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
