"""``DispatcherJobOperator``: KubernetesJobOperator's common use, run wherever
kube-dispatcher routes each pod.

A Kubernetes Job runs ``completions`` pods, at most ``parallelism`` at a time, each
indexed (``completionMode: Indexed``: ``JOB_COMPLETION_INDEX`` in its environment) or
not, and runs a failed pod again until ``backoffLimit`` pods have failed. Here each pod is
one dispatcher job, routed on its own, and the operator does the Job controller's part
from the worker: it submits the completions, keeps ``parallelism`` of them running,
submits a failed one again while the failures stay within ``backoff_limit``, and
succeeds when every completion has. The pod itself is described as for
``DispatcherPodOperator`` (every KubernetesPodOperator parameter), or by the Job
template's pod template (``job_template_file``, ``full_job_spec``).

Every submission has an idempotency key made of the task instance's try, the completion
index and its run number, so a restarted worker finds the jobs it submitted and runs
nothing twice.

I/O: through ``DispatcherHook`` (HTTP to the dispatcher), one thread per running pod.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from airflow.sdk import Context

try:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
except ImportError:  # Airflow 3.1: the task SDK does not have them yet
    from airflow.exceptions import (  # type: ignore[assignment,no-redef,attr-defined,unused-ignore]
        AirflowException,
        AirflowFailException,
        AirflowSkipException,
    )

from dispatcher.airflow import parameters
from dispatcher.airflow.operators import (
    DispatcherJobFailed,
    DispatcherPodOperator,
    _read_pod_template,
)
from dispatcher.airflow.progress import Progress, Watch, failure_message
from dispatcher.client import ApiClientError
from dispatcher.core import CONTAINER_NAME

__all__ = [
    "DEFAULT_BACKOFF_LIMIT",
    "JOB_CARRIED_OVER",
    "JOB_NO_EFFECT",
    "JOB_REFUSED",
    "DispatcherJobOperator",
]

#: Kubernetes' own default ``backoffLimit``.
DEFAULT_BACKOFF_LIMIT = 6
#: The variable an ``Indexed`` Job's pods find their index in (as Kubernetes sets it).
COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"

#: KubernetesJobOperator's own parameters (beyond KubernetesPodOperator's), by fate.
JOB_CARRIED_OVER = frozenset(
    {
        "job_template_file",
        "full_job_spec",
        "backoff_limit",
        "completion_mode",
        "completions",
        "parallelism",
        "wait_until_job_complete",
        "unwrap_single",
    }
)
JOB_NO_EFFECT: Mapping[str, str] = {
    "ttl_seconds_after_finished": "the dispatcher removes each pod as on_finish_action says",
    "job_poll_interval": "the operator long-polls the dispatcher",
    "on_kill_propagation_policy": "killing the task cancels every job, and the dispatcher "
    "deletes their pods",
    "discover_pods_retry_number": "each pod is a dispatcher job the operator submitted: "
    "there is nothing to discover",
}
JOB_REFUSED: Mapping[str, parameters.Refusal] = {
    "suspend": parameters.Refusal(
        "the dispatcher queues each pod until a cluster can take it; there is no Job to "
        "resume later",
        "hold the task back with a sensor, a pool or a paused DAG",
        neutral=(None, False),
    ),
    "manual_selector": parameters.Refusal(
        "pods are found by the dispatcher's own labels",
        "remove manual_selector",
        neutral=(None, False),
    ),
    "selector": parameters.Refusal(
        "pods are found by the dispatcher's own labels",
        "remove selector; put labels on the pods with labels=",
    ),
}


@dataclass
class _Completion:
    index: int
    #: How many times this completion was submitted (its run number is ``runs - 1``).
    runs: int = 0
    result: Any = None


@dataclass
class _Progress:
    failures: int = 0
    results: dict[int, Any] = field(default_factory=dict)


class DispatcherJobOperator(DispatcherPodOperator):
    """Run ``completions`` pods of a Job, at most ``parallelism`` at a time, each wherever
    kube-dispatcher routes it; a KubernetesJobOperator stand-in.

    Takes DispatcherPodOperator's parameters (KubernetesPodOperator's) for the pod, and:

    :param job_template_file: a Job (YAML or JSON): its pod template is the pod's, and
        its ``completions``, ``parallelism``, ``backoffLimit`` and ``completionMode`` the
        defaults of the parameters below. A relative path is looked up next to the DAG.
    :param full_job_spec: the same as a ``V1Job`` (or its dict), over the file's.
    :param completions: pods that must succeed (default 1).
    :param parallelism: pods running at once at most (default 1).
    :param completion_mode: ``NonIndexed`` (default) or ``Indexed``: each pod then finds
        its index (0 to completions - 1) in ``JOB_COMPLETION_INDEX``.
    :param backoff_limit: failed pods tolerated before the task fails (Kubernetes'
        default, 6); a failed completion is run again, as a new pod, until then.
    :param wait_until_job_complete: wait for every completion (else the task ends once
        the pods are submitted; nothing is run again then, and completions must not
        exceed parallelism, since nobody would start the rest).
    :param unwrap_single: with ``do_xcom_push``, one completion's value rather than a
        list of one (the list is in index order).
    """

    template_fields = (*DispatcherPodOperator.template_fields, "job_template_file")
    #: Each pod's XCom comes from the sidecar, as for DispatcherPodOperator.
    xcom_from_file = True

    def __init__(
        self,
        *,
        job_template_file: str | None = None,
        full_job_spec: Any = None,
        backoff_limit: int | None = None,
        completion_mode: str | None = None,
        completions: int | None = None,
        parallelism: int | None = None,
        wait_until_job_complete: bool = False,
        unwrap_single: bool = True,
        **kwargs: Any,
    ) -> None:
        refused = parameters.refusals(kwargs, JOB_REFUSED)
        if refused:
            raise AirflowException(
                f"DispatcherJobOperator {kwargs.get('task_id')!r} cannot honour these "
                "KubernetesJobOperator parameters:\n  - " + "\n  - ".join(refused)
            )
        for name in (*JOB_REFUSED, *JOB_NO_EFFECT):
            kwargs.pop(name, None)
        if kwargs.get("deferrable"):
            raise AirflowException(
                f"DispatcherJobOperator {kwargs.get('task_id')!r}: deferrable=True is not "
                "supported: the operator follows its completions from the worker; for one "
                "pod that waits in the triggerer, use DispatcherPodOperator(deferrable=True) "
                "with Airflow's retries"
            )
        # Set before BaseOperator's __init__ (as the provider's operator sets its own):
        # the parse-time check, run at the end of it, reads the Job template.
        self.job_template_file = job_template_file
        self.full_job_spec = full_job_spec
        self.backoff_limit = backoff_limit
        self.completion_mode = completion_mode
        self.completions = completions
        self.parallelism = parallelism
        self.wait_until_job_complete = wait_until_job_complete
        self.unwrap_single = unwrap_single
        self._running: dict[str, _Completion] = {}
        super().__init__(**kwargs)

    def _template_elsewhere(self) -> bool:
        """The Job template's pod template may give the image."""
        return self.job_template_file is not None or self.full_job_spec is not None

    # ----- the Job's shape ------------------------------------------------------------
    def job_shape(self) -> tuple[int, int, bool, int]:
        """``(completions, parallelism, indexed, backoff_limit)``: the parameters, else the
        Job template's, else Kubernetes' defaults. ``ValueError`` for values Kubernetes
        would refuse."""
        spec = self._job_spec()
        completions = _first(self.completions, spec.get("completions"), 1)
        parallelism = _first(self.parallelism, spec.get("parallelism"), 1)
        backoff = _first(self.backoff_limit, spec.get("backoffLimit"), DEFAULT_BACKOFF_LIMIT)
        mode = _first(self.completion_mode, spec.get("completionMode"), "NonIndexed")
        for name, value, least in (
            ("completions", completions, 1),
            ("parallelism", parallelism, 1),
            ("backoff_limit", backoff, 0),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an integer of at least {least}, not {value!r}")
        if mode not in ("NonIndexed", "Indexed"):
            raise ValueError(f"completion_mode must be 'NonIndexed' or 'Indexed', not {mode!r}")
        if not self.wait_until_job_complete and completions > parallelism:
            raise ValueError(
                f"completions={completions} exceeds parallelism={parallelism}, and with "
                "wait_until_job_complete=False nobody would start the rest: set "
                "wait_until_job_complete=True, or parallelism to completions"
            )
        return completions, parallelism, mode == "Indexed", backoff

    def _job_document(self) -> dict[str, Any]:
        """The Job template: the file's, with ``full_job_spec`` over it (as the provider
        merges them: the full spec's fields win)."""
        document: dict[str, Any] = {}
        if self.job_template_file:
            document = dict(_read_pod_template(self.job_template_file, self._dag_folder()))
        if self.full_job_spec is not None:
            over = parameters.plain(self.full_job_spec)
            document = _merge(document, over if isinstance(over, Mapping) else {})
        return document

    def _job_spec(self) -> dict[str, Any]:
        spec = parameters.plain(self._job_document().get("spec")) or {}
        return {_camel(k): v for k, v in spec.items()} if isinstance(spec, Mapping) else {}

    def _template(self) -> dict[str, Any]:
        """The pod template: the Job template's ``spec.template``, then the operator's
        own pod templates (``pod_template_file``...) over it."""
        fields: dict[str, Any] = {}
        pod = self._job_spec().get("template")
        if pod:
            where = "job_template_file" if self.job_template_file else "full_job_spec"
            fields = parameters.pod_template_fields(pod, where=f"{where}.spec.template")
        own = super()._template()
        return parameters.over_template(fields, own) if own else fields

    def _check_at_parse_time(self) -> None:
        super()._check_at_parse_time()
        if parameters.has_unresolved([self.job_template_file]):
            return
        try:
            self.job_shape()
        except ValueError as exc:
            raise AirflowFailException(f"{self.task_id!r}: {exc}") from None

    # ----- running ----------------------------------------------------------------------
    def execute(self, context: Context) -> Any:
        try:
            completions, parallelism, indexed, backoff = self.job_shape()
        except ValueError as exc:
            raise AirflowFailException(f"{self.task_id!r}: {exc}") from None
        base = self.build_spec(context)
        self.log.info(
            "Job of %d completion(s)%s, %d at a time, %d failure(s) tolerated",
            completions,
            " (Indexed)" if indexed else "",
            parallelism,
            backoff,
        )
        todo = [_Completion(i) for i in range(completions)]
        self._running = {}
        if not self.wait_until_job_complete:
            for completion in todo:
                self._start(base, completion, indexed, context, completions)
            self.log.info(
                "Submitted %d job(s): %s; not waiting (wait_until_job_complete=False), "
                "so a failed pod is not run again",
                len(self._running),
                ", ".join(self._running),
            )
            return None
        state = _Progress()
        with ThreadPoolExecutor(parallelism, thread_name_prefix="dispatcher-job") as pool:
            futures: dict[Future[dict[str, Any]], _Completion] = {}
            while todo or futures:
                while todo and len(futures) < parallelism:
                    completion = todo.pop(0)
                    job = self._start(base, completion, indexed, context, completions)
                    futures[
                        pool.submit(
                            self._follow, job, completion, completions, base.get("namespace")
                        )
                    ] = completion
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                for future in done:
                    completion = futures.pop(future)
                    job = future.result()
                    self._running.pop(str(job["id"]), None)
                    if self._finished(job, completion, state, backoff, indexed):
                        continue
                    todo.append(completion)  # run again, as a new pod
        values = [state.results.get(i) for i in range(completions)]
        if not self.do_xcom_push:
            return None
        return values[0] if self.unwrap_single and completions == 1 else values

    def _start(
        self,
        base: Mapping[str, Any],
        completion: _Completion,
        indexed: bool,
        context: Context,
        completions: int,
    ) -> dict[str, Any]:
        spec = copy.deepcopy(dict(base))
        run = completion.runs
        completion.runs += 1
        spec["idempotency_key"] = f"{base['idempotency_key']}/completion/{completion.index}/{run}"
        if completions > 1:
            spec["name"] = f"{str(base.get('name', self.task_id))[:40]}-{completion.index}"
        if indexed:
            spec["env_vars"] = [
                *spec.get("env_vars", []),
                {"name": COMPLETION_INDEX_ENV, "value": str(completion.index)},
            ]
            spec["labels"] = {**spec.get("labels", {}), "completion_index": str(completion.index)}
        job = self._submit(spec, context)
        self._running[str(job["id"])] = completion
        self._seen(job)
        return job

    def _follow(
        self,
        job: dict[str, Any],
        completion: _Completion,
        completions: int,
        namespace: str | None,
    ) -> dict[str, Any]:
        """Follow one completion's job; ``namespace`` is the one the task asked for."""
        prefix = None
        if self.container_name_log_prefix_enabled:
            prefix = f"{CONTAINER_NAME}-{completion.index}" if completions > 1 else CONTAINER_NAME
        watch = Watch(Progress(namespace=namespace), get_logs=self.get_logs, prefix=prefix)
        return self._follow_to_end(job, watch)

    def _finished(
        self,
        job: Mapping[str, Any],
        completion: _Completion,
        state: _Progress,
        backoff: int,
        indexed: bool,
    ) -> bool:
        """Record a finished completion; ``False`` when it is to run again. Raises when the
        task fails (or is skipped)."""
        self._seen(job)
        where = f"completion {completion.index}" if indexed else f"pod {completion.runs}"
        if job.get("state") == "succeeded":
            state.results[completion.index] = self._xcom(job) if self.do_xcom_push else None
            self._acknowledge(job)
            self.log.info("Job %s (%s) succeeded on %s", job["id"], where, job.get("cluster"))
            return True
        message = failure_message(job)
        self._acknowledge(job)
        if (
            job.get("state") == "failed"
            and job.get("failure") == "exit-code"
            and job.get("exit_code") in self.skip_on_exit_code
        ):
            self._cancel_running()
            raise AirflowSkipException(f"skipped, as skip_on_exit_code says: {message}")
        if job.get("state") != "failed":  # rejected or cancelled: running again cannot help
            self._cancel_running()
            raise DispatcherJobFailed(message, job)
        state.failures += 1
        if state.failures > backoff:
            self._cancel_running()
            raise DispatcherJobFailed(
                f"{state.failures} pod(s) failed, more than backoff_limit={backoff}; the last "
                f"({where}): {message}",
                job,
            )
        self.log.warning(
            "%s failed (%s); running it again (failure %d of %d tolerated)",
            where.capitalize(),
            message,
            state.failures,
            backoff,
        )
        return False

    def _cancel_running(self) -> None:
        for job_id in list(self._running):
            try:
                with self._client() as client:
                    client.cancel(job_id)
                self.log.info("Cancelled job %s", job_id)
            except ApiClientError as exc:
                self.log.error("Could not cancel job %s: %s", job_id, exc)

    def on_kill(self) -> None:
        """The task is being killed: cancel every job still running."""
        self._cancel_running()


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part.title() for part in rest)


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over``'s fields over ``base``'s, mappings merged key by key."""
    merged = dict(base)
    for key, value in over.items():
        if value is None:
            continue
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
