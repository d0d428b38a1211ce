"""The campaign's checker: judges a history folder (``history.py``, ``records.py``), only it.

``python -m benchmarks.fault_campaign.checker DIR`` prints a table and exits 1 if any
violation holds. The violation names are stable (regression cases refer to them):

- ``overlapping_pods``: two pods of one job alive at once (any attempts, any clusters). A pod
  is alive from its creation until it is seen deleted or in a terminal phase; on a cluster
  whose watch had a gap, the synthetic events written after the gap bound it (a pod is
  presumed alive through the gap). An overlap is *allowed*, and reported apart, only where
  the older pod's cluster was unreachable (a fault made it so) when the newer pod was
  created, for at least the ``relaunch`` delay its unreachable policy names in the
  metadata, and only until ``failover_bound_seconds`` after that cluster was back;
- ``pod_after_cancel``: a pod created after the client's cancel was answered (unless the
  answer said the job had already succeeded or failed);
- ``pod_after_final_state``: a pod created after the client read the job succeeded or failed;
- ``pod_for_rejected``: a pod of a job the client was told was rejected, or of an
  idempotency key whose submission was refused (422);
- ``final_state_missing``: an accepted job whose final state the client never read;
- ``final_state_changed``: a job read with two different final states, or read unfinished
  by a request sent after it had been read finished;
- ``key_with_many_jobs``: one idempotency key answered with more than one job id;
- ``pod_left_behind``: a pod alive when the campaign ended, except a job's last pod that its
  ``on_finish_action`` keeps (``keep_pod``; ``delete_succeeded_pod`` after a failure);
- ``slow_failover``: a task submitted while a cluster it could use was unreachable, not
  running ``failover_bound_seconds`` later although another cluster it could use was
  reachable and had room for it the whole time (and no leader loss or Vault outage
  intervened).

Every observation is ordered on the ``mono`` clock. ``observation_tolerance_seconds``
(metadata, default 0.5 s) absorbs the difference between two watches' lags when pods on
two clusters are compared; ``answer_tolerance_seconds`` (default 0.05 s) the lag of one
watch when a pod is compared with an answer the client read (a pod created that much
before an answer may be seen only after it).

I/O: ``load_history`` reads the folder and ``main`` prints; everything else is pure.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.fault_campaign.records import CLIENT_FILE, FAULTS_FILE, META_FILE, PODS_FILE

__all__ = [
    "FINAL_STATE_CHANGED",
    "FINAL_STATE_MISSING",
    "KEY_WITH_MANY_JOBS",
    "OVERLAPPING_PODS",
    "POD_AFTER_CANCEL",
    "POD_AFTER_FINAL_STATE",
    "POD_FOR_REJECTED",
    "POD_LEFT_BEHIND",
    "SLOW_FAILOVER",
    "VIOLATIONS",
    "History",
    "Report",
    "Violation",
    "check",
    "load_history",
    "main",
]

OVERLAPPING_PODS = "overlapping_pods"
POD_AFTER_CANCEL = "pod_after_cancel"
POD_AFTER_FINAL_STATE = "pod_after_final_state"
POD_FOR_REJECTED = "pod_for_rejected"
FINAL_STATE_MISSING = "final_state_missing"
FINAL_STATE_CHANGED = "final_state_changed"
KEY_WITH_MANY_JOBS = "key_with_many_jobs"
POD_LEFT_BEHIND = "pod_left_behind"
SLOW_FAILOVER = "slow_failover"
VIOLATIONS = (
    OVERLAPPING_PODS,
    POD_AFTER_CANCEL,
    POD_AFTER_FINAL_STATE,
    POD_FOR_REJECTED,
    FINAL_STATE_MISSING,
    FINAL_STATE_CHANGED,
    KEY_WITH_MANY_JOBS,
    POD_LEFT_BEHIND,
    SLOW_FAILOVER,
)

FINISHED = frozenset({"succeeded", "failed", "cancelled", "rejected"})
_TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
_STARTED_PHASES = frozenset({"Running", *_TERMINAL_PHASES})
#: Faults that make a cluster unreachable for the dispatcher (target: {"cluster": ...}).
UNREACHABLE_KINDS = frozenset({"apiserver_down", "proxy_errors"})
#: Faults that disturb a cluster without making it unreachable.
DEGRADED_KINDS = frozenset({"proxy_slow", "proxy_throttle"})
#: Faults during which no dispatcher may be able to act at all.
DISPATCHER_OUTAGE_KINDS = frozenset({"kill_leader", "vault_down"})
_DEFAULT_TOLERANCE = 0.5
_DEFAULT_ANSWER_TOLERANCE = 0.05
_DEFAULT_FAILOVER_BOUND = 60.0
_DEFAULT_LEASE = 15.0


# ----------------------------------------------------------------------------- input


@dataclass(frozen=True)
class History:
    """The four parts of a history folder, as read."""

    meta: Mapping[str, Any]
    pods: Sequence[Mapping[str, Any]]
    client: Sequence[Mapping[str, Any]]
    faults: Sequence[Mapping[str, Any]]


def _read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            # A process killed mid-line leaves a torn last line; anything else is corrupt.
            if number != len(lines):
                raise
    return records


def load_history(folder: Path) -> History:
    """Read a history folder written by ``HistoryFiles``."""
    meta_path = folder / META_FILE
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    return History(
        meta=meta,
        pods=_read_lines(folder / PODS_FILE),
        client=_read_lines(folder / CLIENT_FILE),
        faults=_read_lines(folder / FAULTS_FILE),
    )


# ----------------------------------------------------------------------------- output


@dataclass(frozen=True)
class Violation:
    """One broken guarantee: its stable name, the job, what happened, the records that show it."""

    name: str
    job_id: str | None
    detail: str
    evidence: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class AllowedOverlap:
    """Two pods of a job alive at once where the unreachable policy allowed it."""

    job_id: str
    older: str
    newer: str
    seconds: float


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    allowed_overlaps: list[AllowedOverlap] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def names(self) -> set[str]:
        return {v.name for v in self.violations}

    def table(self, evidence_lines: int = 6) -> str:
        """The printed summary: figures, then each violation with its history excerpt."""
        out: list[str] = []
        for title, rows in self.stats.get("sections", []):
            out.append(title)
            out.extend(_rows(rows))
            out.append("")
        counts = Counter(v.name for v in self.violations)
        out.append("violations")
        out.extend(_rows([(name, counts.get(name, 0)) for name in VIOLATIONS]))
        out.append(f"  allowed overlaps (unreachable policy): {len(self.allowed_overlaps)}")
        for violation in self.violations:
            out.append("")
            out.append(f"VIOLATION {violation.name} job={violation.job_id}: {violation.detail}")
            out.extend(
                "    " + json.dumps(record, sort_keys=True, default=str)
                for record in violation.evidence[:evidence_lines]
            )
        out.append("")
        out.append("PASS" if self.ok else f"FAIL: {len(self.violations)} violation(s)")
        return "\n".join(out)


def _rows(rows: Iterable[tuple[str, Any]]) -> list[str]:
    rows = list(rows)
    width = max((len(str(name)) for name, _ in rows), default=0)
    return [f"  {str(name).ljust(width)}  {value}" for name, value in rows]


# ----------------------------------------------------------------------------- model


@dataclass
class PodLife:
    """One pod (one uid) as the watches saw it, with its alive interval on ``mono``."""

    cluster: str
    uid: str
    name: str
    job_id: str | None
    attempt: Any
    key: str | None
    gpus: int
    created: float
    created_synthetic: bool
    running: float | None = None
    ended: float | None = None
    node: str | None = None
    node_at: float | None = None
    records: list[Mapping[str, Any]] = field(default_factory=list)

    def alive_at(self, moment: float) -> bool:
        return self.created <= moment and (self.ended is None or moment < self.ended)

    def end_or(self, end: float) -> float:
        return self.ended if self.ended is not None else end


@dataclass(frozen=True)
class Fault:
    id: Any
    kind: str
    target: Mapping[str, Any]
    start: float
    end: float  # math.inf while never ended
    records: tuple[Mapping[str, Any], ...]

    def overlaps(self, start: float, end: float) -> bool:
        return self.start < end and start < self.end

    def covers(self, moment: float) -> bool:
        return self.start <= moment <= self.end


def _wall_to_mono(timestamp: str | None, record: Mapping[str, Any]) -> float | None:
    if not timestamp:
        return None
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
    return float(record["mono"]) - (float(record["t"]) - moment)


def pod_lives(pods: Sequence[Mapping[str, Any]]) -> dict[str, PodLife]:
    """Every pod seen, by uid, with when it was created, started, ended (``None``: alive)."""
    lives: dict[str, PodLife] = {}
    gap_since: dict[str, float] = {}
    for record in sorted(pods, key=lambda r: float(r["mono"])):
        event = record.get("event")
        cluster = str(record.get("cluster"))
        if event == "WATCH_GAP":
            gap_since.setdefault(cluster, float(record.get("since", record["mono"])))
            continue
        if event == "WATCH_RESUMED":
            gap_since.pop(cluster, None)
            continue
        if event not in ("ADDED", "MODIFIED", "DELETED"):
            continue
        mono = float(record["mono"])
        synthetic = bool(record.get("synthetic"))
        uid = str(record["uid"])
        life = lives.get(uid)
        if life is None:
            created = mono
            if synthetic:
                # Created while the watch was blind: as early as the apiserver says, but not
                # before the watch went blind (it would have been seen).
                stamped = _wall_to_mono(record.get("created_at"), record)
                created = stamped if stamped is not None else mono
                if cluster in gap_since:
                    created = max(created, gap_since[cluster])
                created = min(created, mono)
            life = PodLife(
                cluster=cluster,
                uid=uid,
                name=str(record.get("pod")),
                job_id=record.get("job_id"),
                attempt=record.get("attempt"),
                key=record.get("key"),
                gpus=int(record.get("gpus") or 0),
                created=created,
                created_synthetic=synthetic,
            )
            lives[uid] = life
        life.records.append(record)
        if record.get("node") and life.node is None:
            life.node, life.node_at = str(record["node"]), mono
        phase = record.get("phase")
        if phase in _STARTED_PHASES and life.running is None:
            life.running = mono
        if (phase in _TERMINAL_PHASES or event == "DELETED") and life.ended is None:
            life.ended = mono
    return lives


def faults_of(records: Sequence[Mapping[str, Any]]) -> list[Fault]:
    starts: dict[Any, Mapping[str, Any]] = {}
    ends: dict[Any, Mapping[str, Any]] = {}
    for record in records:
        if record.get("phase") == "start":
            starts[record["fault_id"]] = record
        elif record.get("phase") == "end":
            ends[record["fault_id"]] = record
    faults = []
    for fault_id, start in starts.items():
        end = ends.get(fault_id)
        faults.append(
            Fault(
                id=fault_id,
                kind=str(start["kind"]),
                target=dict(start.get("target") or {}),
                start=float(start["mono"]),
                end=float(end["mono"]) if end else math.inf,
                records=(start, end) if end else (start,),
            )
        )
    return sorted(faults, key=lambda f: f.start)


@dataclass
class _Observation:
    state: str
    sent: float
    answered: float
    record: Mapping[str, Any]


@dataclass
class _Client:
    """What the client saw, per job and per key."""

    tasks: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    key_jobs: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    job_key: dict[str, str] = field(default_factory=dict)
    accepted: dict[str, float] = field(default_factory=dict)
    accepted_record: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    observations: dict[str, list[_Observation]] = field(default_factory=lambda: defaultdict(list))
    cancels: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    refused_keys: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    submit_answers: list[Mapping[str, Any]] = field(default_factory=list)

    def finished(self, job_id: str) -> list[_Observation]:
        return [o for o in self.observations.get(job_id, []) if o.state in FINISHED]

    def final_state(self, job_id: str) -> str | None:
        states = {o.state for o in self.finished(job_id)}
        return next(iter(states)) if len(states) == 1 else None


def _client_of(records: Sequence[Mapping[str, Any]]) -> _Client:
    seen = _Client()
    for record in sorted(records, key=lambda r: float(r["mono"])):
        kind = record.get("type")
        key = record.get("key")
        if kind == "task" and key:
            seen.tasks[str(key)] = record
            continue
        if kind != "request":
            continue
        status = record.get("status")
        job_id = record.get("job_id")
        state = record.get("state")
        op = record.get("op")
        ok = isinstance(status, int) and 200 <= status < 300
        if op in ("submit", "find") and ok and job_id and key:
            seen.key_jobs[str(key)].add(str(job_id))
            seen.job_key.setdefault(str(job_id), str(key))
        if op == "submit" and ok and job_id:
            seen.submit_answers.append(record)
            if str(job_id) not in seen.accepted:
                seen.accepted[str(job_id)] = float(record["mono"])
                seen.accepted_record[str(job_id)] = record
        if op == "submit" and status == 422 and key:
            seen.refused_keys.setdefault(str(key), record)
        if ok and job_id and state:
            seen.observations[str(job_id)].append(
                _Observation(
                    str(state),
                    float(record.get("sent", record["mono"])),
                    float(record["mono"]),
                    record,
                )
            )
        if op == "cancel" and ok and job_id and state not in ("succeeded", "failed", "rejected"):
            seen.cancels.setdefault(str(job_id), record)
    return seen


# ----------------------------------------------------------------------------- checks


@dataclass
class _Context:
    history: History
    lives: dict[str, PodLife]
    by_job: dict[str, list[PodLife]]
    faults: list[Fault]
    client: _Client
    end: float
    tolerance: float
    answer_tolerance: float
    bound: float
    lease: float

    def unreachable(self, cluster: str, kinds: frozenset[str] = UNREACHABLE_KINDS) -> list[Fault]:
        return [f for f in self.faults if f.kind in kinds and f.target.get("cluster") == cluster]


def _first_event(life: PodLife) -> Mapping[str, Any]:
    return life.records[0]


def _overlaps(ctx: _Context, report: Report) -> None:
    policies = ctx.history.meta.get("unreachable_policy") or {}
    for job_id, lives in ctx.by_job.items():
        ordered = sorted(lives, key=lambda life: life.created)
        for i, older in enumerate(ordered):
            for newer in ordered[i + 1 :]:
                start = newer.created
                end = min(older.end_or(ctx.end), newer.end_or(ctx.end))
                if end - start <= ctx.tolerance:
                    continue
                policy = policies.get(older.cluster) or {"action": "wait"}
                if _allowed(ctx, older, start, end, policy):
                    report.allowed_overlaps.append(
                        AllowedOverlap(job_id, older.name, newer.name, end - start)
                    )
                    continue
                report.violations.append(
                    Violation(
                        OVERLAPPING_PODS,
                        job_id,
                        f"{older.cluster}/{older.name} (attempt {older.attempt}) and "
                        f"{newer.cluster}/{newer.name} (attempt {newer.attempt}) alive together "
                        f"for {end - start:.1f}s (policy of {older.cluster}: "
                        f"{policy.get('action')})",
                        (*older.records[:3], *newer.records[:3]),
                    )
                )


def _allowed(
    ctx: _Context, older: PodLife, start: float, end: float, policy: Mapping[str, Any]
) -> bool:
    if policy.get("action") != "relaunch":
        return False
    after = float(policy.get("after_seconds") or 0.0)
    for fault in ctx.unreachable(older.cluster):
        if fault.covers(start) and start - fault.start >= after and end <= fault.end + ctx.bound:
            return True
    return False


def _pods_after_answers(ctx: _Context, report: Report) -> None:
    for job_id, cancel in ctx.client.cancels.items():
        answered = float(cancel["mono"])
        for life in ctx.by_job.get(job_id, []):
            if life.created > answered + ctx.answer_tolerance:
                report.violations.append(
                    Violation(
                        POD_AFTER_CANCEL,
                        job_id,
                        f"{life.cluster}/{life.name} created {life.created - answered:.2f}s after "
                        "the cancel was answered",
                        (cancel, _first_event(life)),
                    )
                )
    for job_id in ctx.by_job:
        finished = [o for o in ctx.client.finished(job_id) if o.state in ("succeeded", "failed")]
        if not finished:
            continue
        first = min(finished, key=lambda o: o.answered)
        for life in ctx.by_job[job_id]:
            if life.created > first.answered + ctx.answer_tolerance:
                report.violations.append(
                    Violation(
                        POD_AFTER_FINAL_STATE,
                        job_id,
                        f"{life.cluster}/{life.name} created {life.created - first.answered:.2f}s "
                        f"after the client read the job {first.state}",
                        (first.record, _first_event(life)),
                    )
                )


def _rejected(ctx: _Context, report: Report) -> None:
    for job_id, lives in ctx.by_job.items():
        rejected = [o for o in ctx.client.observations.get(job_id, []) if o.state == "rejected"]
        if rejected and lives:
            report.violations.append(
                Violation(
                    POD_FOR_REJECTED,
                    job_id,
                    f"{len(lives)} pod(s) of a job the client was told was rejected",
                    (rejected[0].record, *(_first_event(life) for life in lives)),
                )
            )
    for key, refusal in ctx.client.refused_keys.items():
        if ctx.client.key_jobs.get(key):
            continue  # accepted later under the same key: judged as that job
        lives = [life for life in ctx.lives.values() if life.key == key]
        if lives:
            report.violations.append(
                Violation(
                    POD_FOR_REJECTED,
                    lives[0].job_id,
                    f"{len(lives)} pod(s) for key {key!r} whose submission was refused (422)",
                    (refusal, *(_first_event(life) for life in lives)),
                )
            )


def _final_states(ctx: _Context, report: Report) -> None:
    for job_id in ctx.client.accepted:
        finished = ctx.client.finished(job_id)
        if not finished:
            last = ctx.client.observations.get(job_id, [])
            report.violations.append(
                Violation(
                    FINAL_STATE_MISSING,
                    job_id,
                    "the client never read a final state"
                    + (f" (last read: {last[-1].state})" if last else ""),
                    (ctx.client.accepted_record[job_id], *(o.record for o in last[-2:])),
                )
            )
            continue
        states = sorted({o.state for o in finished})
        if len(states) > 1:
            report.violations.append(
                Violation(
                    FINAL_STATE_CHANGED,
                    job_id,
                    f"read finished as {' and '.join(states)}",
                    tuple(o.record for o in finished),
                )
            )
            continue
        first = min(finished, key=lambda o: o.answered)
        later = [
            o
            for o in ctx.client.observations[job_id]
            if o.state not in FINISHED and o.sent > first.answered
        ]
        if later:
            report.violations.append(
                Violation(
                    FINAL_STATE_CHANGED,
                    job_id,
                    f"read {first.state}, then {later[0].state} by a request sent afterwards",
                    (first.record, later[0].record),
                )
            )


def _keys(ctx: _Context, report: Report) -> None:
    for key, jobs in ctx.client.key_jobs.items():
        if len(jobs) > 1:
            report.violations.append(
                Violation(
                    KEY_WITH_MANY_JOBS,
                    sorted(jobs)[0],
                    f"idempotency key {key!r} answered with jobs {', '.join(sorted(jobs))}",
                    tuple(r for r in ctx.client.submit_answers if r.get("key") == key)[:6],
                )
            )


def _kept(ctx: _Context, life: PodLife) -> bool:
    """Whether ``life`` is a pod its job's ``on_finish_action`` keeps."""
    if life.job_id is None:
        return False
    key = ctx.client.job_key.get(life.job_id) or life.key
    task = ctx.client.tasks.get(key or "")
    final = ctx.client.final_state(life.job_id)
    if task is None or final is None:
        return False
    last = max(ctx.by_job[life.job_id], key=lambda other: other.created)
    if last is not life:
        return False
    action = task.get("on_finish_action", "delete_pod")
    if action == "keep_pod":
        return final in ("succeeded", "failed")
    if action == "delete_succeeded_pod":
        return final == "failed"
    return False


def _left_behind(ctx: _Context, report: Report) -> None:
    for life in ctx.lives.values():
        if life.ended is None and not _kept(ctx, life):
            job_id = life.job_id or ""
            cancel = ctx.client.cancels.get(job_id)
            finished = ctx.client.finished(job_id)
            read = [*([cancel] if cancel else []), *(o.record for o in finished[:1])]
            report.violations.append(
                Violation(
                    POD_LEFT_BEHIND,
                    life.job_id,
                    f"{life.cluster}/{life.name} still alive when the campaign ended "
                    f"(final state read: {ctx.client.final_state(job_id)})",
                    (*life.records[:1], *life.records[-1:], *read),
                )
            )


def _cordoned(ctx: _Context, cluster: str, node: str, moment: float) -> bool:
    return any(
        f.kind == "cordon_node"
        and f.target.get("cluster") == cluster
        and f.target.get("node") == node
        and f.covers(moment)
        for f in ctx.faults
    )


def _room(ctx: _Context, cluster: str, task: Mapping[str, Any], moment: float) -> bool:
    """Whether a node of ``cluster`` had room for ``task`` at ``moment``, by the history."""
    gpus = int(task.get("gpus") or 0)
    nodes = ((ctx.history.meta.get("clusters") or {}).get(cluster) or {}).get("nodes") or []
    here = [life for life in ctx.lives.values() if life.cluster == cluster]
    used: Counter[str] = Counter()
    waiting = 0
    for life in here:
        if not life.alive_at(moment):
            continue
        if life.node is not None and life.node_at is not None and life.node_at <= moment:
            used[life.node] += life.gpus
        else:
            waiting += life.gpus
    model = (task.get("gpu_model") or "").lower()
    for node in nodes:
        if _cordoned(ctx, cluster, node["name"], moment):
            continue
        if model and model not in str(node.get("gpu_model") or "").lower():
            continue
        if int(node.get("gpus") or 0) - used[node["name"]] - waiting >= max(gpus, 1):
            return True
    return False


def _had_room_throughout(
    ctx: _Context, cluster: str, task: Mapping[str, Any], start: float, end: float
) -> bool:
    moments = {start}
    for life in ctx.lives.values():
        if life.cluster == cluster:
            moments.update(
                float(r["mono"]) for r in life.records if start <= float(r["mono"]) <= end
            )
    for fault in ctx.faults:
        if fault.kind == "cordon_node" and fault.target.get("cluster") == cluster:
            moments.update(m for m in (fault.start, fault.end) if start <= m <= end)
    return all(_room(ctx, cluster, task, moment) for moment in sorted(moments))


def _first_running(ctx: _Context, job_id: str) -> PodLife | None:
    started = [life for life in ctx.by_job.get(job_id, []) if life.running is not None]
    return min(started, key=lambda life: life.running or 0.0) if started else None


def _slow_failover(ctx: _Context, report: Report) -> None:
    for job_id, submitted in ctx.client.accepted.items():
        violation = _failover_of(ctx, job_id, submitted)
        if violation is not None:
            report.violations.append(violation)


def _failover_of(ctx: _Context, job_id: str, submitted: float) -> Violation | None:
    key = ctx.client.job_key.get(job_id)
    task = ctx.client.tasks.get(key or "")
    if task is None or task.get("expect") in ("cancel", "reject"):
        return None
    eligible = list(task.get("eligible") or [])
    deadline = submitted + ctx.bound
    if len(eligible) < 2 or deadline > ctx.end:
        return None
    cancel = ctx.client.cancels.get(job_id)
    if cancel is not None and float(cancel["mono"]) < deadline:
        return None
    first = _first_running(ctx, job_id)
    if first is not None and first.running is not None and first.running <= deadline:
        return None
    if any(
        f.kind in DISPATCHER_OUTAGE_KINDS and f.overlaps(submitted - ctx.lease, deadline)
        for f in ctx.faults
    ):
        return None
    lost = [c for c in eligible if any(f.covers(submitted) for f in ctx.unreachable(c))]
    for down in lost:
        for other in eligible:
            disturbed = ctx.unreachable(other, UNREACHABLE_KINDS | DEGRADED_KINDS)
            if other == down or any(f.overlaps(submitted, deadline) for f in disturbed):
                continue
            if _had_room_throughout(ctx, other, task, submitted, deadline):
                started = (
                    f"until {first.running - submitted:.1f}s after its submission"
                    if first is not None and first.running is not None
                    else "at all"
                )
                return Violation(
                    SLOW_FAILOVER,
                    job_id,
                    f"submitted while {down} was unreachable; {other} had room for it for "
                    f"{ctx.bound:.0f}s, yet it was not running {started}",
                    (task, ctx.client.accepted_record[job_id]),
                )
    return None


# ----------------------------------------------------------------------------- figures


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _spread(values: Sequence[float]) -> str:
    if not values:
        return "n=0"
    return (
        f"p50 {_percentile(values, 0.5):.1f}s  p99 {_percentile(values, 0.99):.1f}s  "
        f"max {max(values):.1f}s  n={len(values)}"
    )


def _failover_latencies(ctx: _Context, *, queued_before: bool) -> list[float]:
    """Seconds from a GPU cluster's loss (or a task's submission during it) until a task
    that could use that cluster and another runs on another; ``queued_before``: only tasks
    already waiting when the cluster was lost, else only tasks submitted during the loss."""
    latencies = []
    for fault in ctx.faults:
        if fault.kind != "apiserver_down":
            continue
        lost = str(fault.target.get("cluster"))
        for job_id, submitted in ctx.client.accepted.items():
            task = ctx.client.tasks.get(ctx.client.job_key.get(job_id) or "")
            eligible = list((task or {}).get("eligible") or [])
            if lost not in eligible or len(eligible) < 2 or submitted > fault.end:
                continue
            if (submitted < fault.start) != queued_before:
                continue
            since = max(fault.start, submitted)
            first = _first_running(ctx, job_id)
            if first is None or first.running is None or first.running <= since:
                continue
            if first.cluster != lost and first.running <= fault.end + ctx.bound:
                latencies.append(first.running - since)
    return latencies


def _leader_recoveries(ctx: _Context) -> list[float]:
    creations = sorted(
        float(r["mono"])
        for r in ctx.history.pods
        if r.get("event") == "ADDED" and not r.get("synthetic")
    )
    accepted = sorted(float(r["mono"]) for r in ctx.client.submit_answers)
    recoveries = []
    for fault in ctx.faults:
        if fault.kind != "kill_leader":
            continue
        after = [m for m in (*creations, *accepted) if m > fault.start]
        if after:
            recoveries.append(min(after) - fault.start)
    return recoveries


def _stats(ctx: _Context, report: Report) -> None:
    client = ctx.client
    kind_of = {
        job_id: str((client.tasks.get(client.job_key.get(job_id) or "") or {}).get("task_kind"))
        for job_id in client.accepted
    }
    outcomes: Counter[tuple[str, str]] = Counter(
        (kind_of[job_id], client.final_state(job_id) or "unknown") for job_id in client.accepted
    )
    creates = Counter(len(ctx.by_job.get(job_id, [])) for job_id in client.accepted)
    faults = Counter(f.kind for f in ctx.faults)
    skipped = Counter(str(r.get("kind")) for r in ctx.history.faults if r.get("phase") == "skipped")
    planned = Counter(str(p.get("kind")) for p in ctx.history.meta.get("faults_planned") or [])
    unreached = planned - faults - skipped
    gaps: dict[str, list[float]] = defaultdict(list)
    for record in ctx.history.pods:
        if record.get("event") == "WATCH_RESUMED":
            gaps[str(record["cluster"])].append(float(record.get("gap_seconds") or 0.0))
    refused = len(client.refused_keys)
    sections: list[tuple[str, list[tuple[str, Any]]]] = [
        (
            "campaign",
            [
                ("seed", ctx.history.meta.get("seed")),
                ("namespace", ctx.history.meta.get("namespace")),
                ("observed seconds", f"{ctx.end - _start(ctx):.0f}"),
                ("failover bound", f"{ctx.bound:.0f}s"),
                ("unreachable policy", json.dumps(ctx.history.meta.get("unreachable_policy"))),
            ],
        ),
        (
            "jobs",
            [
                ("accepted jobs", len(client.accepted)),
                ("refused submissions (422)", refused),
                ("pods observed", len(ctx.lives)),
                *sorted((f"{kind} -> {state}", n) for (kind, state), n in outcomes.items()),
            ],
        ),
        (
            "faults injected",
            [
                *sorted((kind, n) for kind, n in faults.items()),
                *sorted((f"{kind} (skipped)", n) for kind, n in skipped.items()),
                *sorted((f"{kind} (planned, not reached)", n) for kind, n in unreached.items()),
            ],
        ),
        ("pods created per job", [(f"{n} pod(s)", jobs) for n, jobs in sorted(creates.items())]),
        (
            "timings",
            [
                (
                    "cluster lost -> tasks queued then running elsewhere",
                    _spread(_failover_latencies(ctx, queued_before=True)),
                ),
                (
                    "submitted while a cluster it could use was lost -> running elsewhere",
                    _spread(_failover_latencies(ctx, queued_before=False)),
                ),
                (
                    "leader kill -9 -> next pod created or submission accepted",
                    _spread(_leader_recoveries(ctx)),
                ),
            ],
        ),
        (
            "watch gaps",
            [(c, f"{len(v)} gap(s), {sum(v):.1f}s") for c, v in sorted(gaps.items())]
            or [("none", "")],
        ),
    ]
    report.stats = {
        "sections": sections,
        "accepted_jobs": len(client.accepted),
        "faults": dict(faults),
        "creates_per_job": dict(creates),
        "failover_latencies": _failover_latencies(ctx, queued_before=True),
        "submitted_during_loss_latencies": _failover_latencies(ctx, queued_before=False),
        "leader_recoveries": _leader_recoveries(ctx),
    }


def _start(ctx: _Context) -> float:
    monos = [float(r["mono"]) for part in (ctx.history.pods, ctx.history.client) for r in part]
    return min(monos, default=ctx.end)


def check(history: History) -> Report:
    """Judge ``history``; the report lists every violation and the campaign's figures."""
    lives = pod_lives(history.pods)
    namespace = history.meta.get("namespace")
    if namespace:
        lives = {uid: life for uid, life in lives.items() if _namespace(life) in (namespace, None)}
    by_job: dict[str, list[PodLife]] = defaultdict(list)
    for life in lives.values():
        if life.job_id:
            by_job[life.job_id].append(life)
    monos = [
        float(r["mono"]) for part in (history.pods, history.client, history.faults) for r in part
    ]
    ctx = _Context(
        history=history,
        lives=lives,
        by_job=dict(by_job),
        faults=faults_of(history.faults),
        client=_client_of(history.client),
        end=max(monos, default=0.0),
        tolerance=float(history.meta.get("observation_tolerance_seconds", _DEFAULT_TOLERANCE)),
        answer_tolerance=float(
            history.meta.get("answer_tolerance_seconds", _DEFAULT_ANSWER_TOLERANCE)
        ),
        bound=float(history.meta.get("failover_bound_seconds", _DEFAULT_FAILOVER_BOUND)),
        lease=float(history.meta.get("lease_duration_seconds", _DEFAULT_LEASE)),
    )
    report = Report()
    _overlaps(ctx, report)
    _pods_after_answers(ctx, report)
    _rejected(ctx, report)
    _final_states(ctx, report)
    _keys(ctx, report)
    _left_behind(ctx, report)
    _slow_failover(ctx, report)
    _stats(ctx, report)
    return report


def _namespace(life: PodLife) -> str | None:
    return life.records[0].get("namespace") if life.records else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Judge a fault campaign's history folder.")
    parser.add_argument("history", type=Path)
    args = parser.parse_args(argv)
    report = check(load_history(args.history))
    print(report.table())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
