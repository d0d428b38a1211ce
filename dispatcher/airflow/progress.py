"""What an Airflow task says about its job, and which log lines it already said; pure.

- ``Progress`` follows one job through its views (the API's job JSON): it says where the
  job went and why (first, before any log line), says so again when it moves to another
  cluster, and counts the log lines already logged for the current pod, so a line is
  logged once even when the log stream is re-read from its start (after a dropped
  connection, a restarted worker, or the hand-over between trigger and worker).
- ``Watch`` decides what following a job means, event by event (a job view, a log line,
  the end of a log stream, a quiet spell): what to say in the task log, which pod's log
  to follow from which line, when the watch is over. The worker (threads) and the
  trigger (asyncio) drive the same ``Watch``; they only do the I/O.
- ``failure_message`` turns a finished job into the sentence a task fails with:
  ``OOMKilled on gpu-a100 after 3m12s: container base exceeded memory limit 3Gi ...``.

No I/O, no clock, no Airflow: the operator and the trigger do the talking.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "FINISHED_STATES",
    "Actions",
    "Progress",
    "Watch",
    "failure_message",
    "format_duration",
    "is_finished",
]

FINISHED_STATES = frozenset({"succeeded", "failed", "cancelled", "rejected"})
#: The first long poll while a job waits for its pod to run; later ones double.
FIRST_POLL_SECONDS = 0.25

Job = Mapping[str, Any]

#: The word a failure message starts with when the dispatcher's message has none.
_TITLES = {
    "exit-code": "Failed",
    "oom-killed": "OOMKilled",
    "image-pull": "ImagePullBackOff",
    "unschedulable": "Unschedulable",
    "deadline-exceeded": "DeadlineExceeded",
    "evicted": "Evicted",
    "create-container-config-error": "CreateContainerConfigError",
    "init-container": "InitContainerFailed",
    "node-lost": "NodeLost",
}


def is_finished(job: Job) -> bool:
    return job.get("state") in FINISHED_STATES


@dataclass
class Progress:
    """Where a task's watch of its job stands; travels through a deferral as a dict."""

    #: The pod whose log is being logged, and how many of its lines were logged.
    pod: str | None = None
    lines: int = 0
    #: The placement (``cluster/pod``) last announced; ``"queued"`` once a wait was said.
    announced: str | None = None
    #: The routing explanation last said (not repeated when it has not changed).
    reason: str | None = None
    #: The namespace the task asked for (its spec's), to say when a cluster put the pod
    #: in another one.
    namespace: str | None = None
    #: Where the queued job stood when last said (``queue.message`` of the job view).
    queue: str | None = None
    #: The placement whose dependency copies were said (``cluster/pod``).
    copies: str | None = None

    def observe(self, job: Job) -> list[str]:
        """Messages about where the job is, each said once; resets the line count when
        a new pod (another attempt) takes over."""
        messages: list[str] = []
        cluster, pod = job.get("cluster"), job.get("pod")
        reason = job.get("reason") or ""
        said = self.reason
        if cluster and pod:
            placement = f"{cluster}/{pod}"
            if placement != self.announced:
                attempt = job.get("attempts") or 1
                if attempt <= 1:
                    head = f"Job {job.get('id')} dispatched to cluster {cluster}"
                else:
                    head = (
                        f"Job {job.get('id')} is on cluster {cluster} (attempt {attempt})"
                        + _previous_end(job)
                    )
                messages.append(_sentence(head, "" if reason == said else reason))
                messages += self._namespace_notice(cluster, job.get("namespace"))
                self.announced, self.reason = placement, reason
            messages += self._copies_notice(job, cluster, placement)
            if pod != self.pod:
                self.pod, self.lines = pod, 0
        elif job.get("state") == "queued" and self.announced is None:
            messages.append(_sentence(f"Job {job.get('id')} is queued", reason))
            self.announced, self.reason = "queued", reason
        if job.get("state") == "queued":
            where = (job.get("queue") or {}).get("message")
            if where and where != self.queue:
                messages.append(f"Job {job.get('id')} waits for {where}")
                self.queue = where
        return messages

    def _copies_notice(self, job: Job, cluster: str, placement: str) -> list[str]:
        """What the dispatcher materialised in the cluster for this attempt (names only),
        said once the record has it (the pod's create answered)."""
        history = job.get("history") or []
        current = history[-1] if history else {}
        materialised = current.get("materialised") or []
        if not materialised or self.copies == placement:
            return []
        self.copies = placement
        return [f"Materialised in cluster {cluster} before the pod: " + "; ".join(materialised)]

    def _namespace_notice(self, cluster: str, namespace: str | None) -> list[str]:
        if not self.namespace or not namespace or namespace == self.namespace:
            return []
        return [
            f"The task asked for namespace {self.namespace!r}, which cluster {cluster} does "
            f"not allow: its pod runs in {namespace!r}, where the Secrets, ConfigMaps and "
            "PersistentVolumeClaims it names must exist (the cluster's "
            f"pod_defaults.allowed_namespaces can list {self.namespace!r})"
        ]

    def accept(self, pod: str, index: int) -> bool:
        """Whether line ``index`` (0-based) of ``pod``'s log is new; counts it if so."""
        if pod != self.pod or index != self.lines:
            return False
        self.lines += 1
        return True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Progress:
        data = data or {}
        return cls(
            pod=data.get("pod"),
            lines=int(data.get("lines") or 0),
            announced=data.get("announced"),
            reason=data.get("reason"),
            namespace=data.get("namespace"),
            queue=data.get("queue"),
            copies=data.get("copies"),
        )


@dataclass(frozen=True, slots=True)
class Actions:
    """What a driver does after one event, in this order."""

    #: Lines for the task log.
    say: tuple[str, ...] = ()
    #: Follow this pod's log from this line (0-based), replacing any other follower.
    follow: tuple[str, int] | None = None
    #: The watch is over: stop followers, the job is finished and its log read.
    done: bool = False


class Watch:
    """Following one job until it is finished and its log is logged; pure.

    A driver feeds it job views (from long polls), log lines with their index in the pod's
    log, the end of a log stream, and a quiet spell after the job finished (no line for a
    moment: a follower that never ends, as some log servers do, has said all it had).
    """

    def __init__(
        self, progress: Progress, *, get_logs: bool = True, prefix: str | None = "base"
    ) -> None:
        self.progress = progress
        self.get_logs = get_logs
        self.prefix = f"[{prefix}] " if prefix else ""
        self.job: Job = {}
        self.finished = False
        #: The followed log was read to its end (the stream ended by itself).
        self.caught_up = False
        self._following: str | None = None
        self._startup_polls = 0

    def on_job(self, job: Job) -> Actions:
        self.job = job
        say = tuple(self.progress.observe(job))
        follow = None
        pod = job.get("pod")
        launched = job.get("state") not in ("queued", "launching")
        if self.get_logs and pod and pod != self._following and launched:
            self._following = pod
            self.caught_up = False
            follow = (pod, self.progress.lines)
        self.finished = is_finished(job)
        return Actions(say=say, follow=follow, done=self._done())

    def on_line(self, pod: str, index: int, text: str) -> Actions:
        if not self.progress.accept(pod, index):
            return Actions()
        self.caught_up = False
        return Actions(say=(self.prefix + text,))

    def on_log_end(self, pod: str) -> Actions:
        if pod == self._following:
            self.caught_up = True
        return Actions(done=self._done())

    def on_quiet(self) -> Actions:
        """Nothing arrived for a while: once the job is finished, the watch is over."""
        return Actions(done=self.finished)

    def _done(self) -> bool:
        return self.finished and (not self.get_logs or self._following is None or self.caught_up)

    def needs_catch_up(self) -> bool:
        """Whether the finished pod's log may have lines not yet logged."""
        return self.get_logs and bool(self.job.get("pod")) and not self.caught_up

    def next_wait_seconds(self, poll_interval: float, wait_timeout: float) -> float:
        """How long the next long poll may be held: until the pod runs, short and
        growing (0.25 s, 0.5 s... up to ``poll_interval``) so that its log is followed
        from the start even when it runs for a second only; then the full wait."""
        state = self.job.get("state")
        if self.get_logs and state in ("queued", "launching", "pending"):
            self._startup_polls = min(self._startup_polls + 1, 16)
            return min(poll_interval, FIRST_POLL_SECONDS * (1 << (self._startup_polls - 1)))
        return wait_timeout


def _sentence(head: str, reason: str) -> str:
    return f"{head}: {reason}" if reason else head


def _previous_end(job: Job) -> str:
    history = job.get("history") or []
    if len(history) < 2:
        return ""
    previous = history[-2]
    ended = previous.get("ended")
    where = previous.get("cluster")
    return f" after leaving {where} ({ended})" if ended else f" after leaving {where}"


def format_duration(seconds: float) -> str:
    """``45s``, ``3m12s``, ``2h05m``: how people read task durations."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def failure_message(job: Job) -> str:
    """Why a finished job did not succeed, with where and after how long.

    ``OOMKilled on gpu-a100 after 3m12s: container base exceeded memory limit 3Gi (exit
    code 137)`` followed by the job id and the dispatcher's classification.
    """
    state = job.get("state")
    failure = job.get("failure")
    message = (job.get("message") or "").strip()
    job_id = job.get("id")
    if state == "rejected":
        return f"Rejected: no cluster can run this task: {message} (job {job_id})"
    head, sep, rest = message.partition(": ")
    if sep and head and " " not in head:
        title, detail = head, rest
    else:
        title = "Cancelled" if state == "cancelled" else _TITLES.get(failure or "", "Failed")
        detail = message
    where = f" on {job['cluster']}" if job.get("cluster") else ""
    started = job.get("running_at") or job.get("submitted_at")
    finished = job.get("finished_at")
    after = (
        f" after {format_duration(finished - started)}"
        if isinstance(started, int | float) and isinstance(finished, int | float)
        else ""
    )
    classification = f", failure: {failure}" if failure else ""
    text = f"{title}{where}{after}"
    if detail and detail.lower() != title.lower():
        text += f": {detail}"
    return f"{text} (job {job_id}{classification})"
