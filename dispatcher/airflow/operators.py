"""``DispatcherPodOperator``: KubernetesPodOperator's parameters, run wherever
kube-dispatcher routes the task.

The operator turns its parameters into a task spec (``parameters``), submits it with an
idempotency key made of the task instance's identity, and follows the job: where it went
and why, its log as it is written, then its outcome. The termination message's JSON is
the task's return value (an XCom with ``do_xcom_push``); a failure raises
``DispatcherJobFailed`` with the dispatcher's classification. ``deferrable=True`` hands
the waiting to ``DispatcherJobTrigger`` and frees the worker slot.

Parameters the dispatcher cannot honour are refused when the DAG is parsed.

I/O: through ``DispatcherHook`` (HTTP to the dispatcher).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Container, Mapping, Sequence
from contextvars import ContextVar
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import yaml
from airflow.sdk import BaseOperator, Context, conf

try:
    from airflow.sdk.exceptions import (
        AirflowException,
        AirflowFailException,
        AirflowSkipException,
    )
except ImportError:  # Airflow 3.1: the task SDK does not have them yet
    from airflow.exceptions import (  # type: ignore[assignment,no-redef,attr-defined,unused-ignore]
        AirflowException,
        AirflowFailException,
        AirflowSkipException,
    )

from dispatcher.airflow import parameters
from dispatcher.airflow.following import catch_up, follow_job
from dispatcher.airflow.hooks import DispatcherHook
from dispatcher.airflow.links import DispatcherConsoleLink, GrafanaClusterLink
from dispatcher.airflow.progress import (
    Progress,
    Watch,
    failure_message,
    format_duration,
    is_finished,
)
from dispatcher.airflow.provider import DEFAULT_CONN_ID
from dispatcher.airflow.triggers import DispatcherJobTrigger
from dispatcher.client import ApiClientError, DispatcherClient
from dispatcher.core import CONTAINER_NAME
from dispatcher.errors import SpecError

__all__ = ["DispatcherJobFailed", "DispatcherPodOperator"]

#: The parameters that give a pod template (``_template``).
POD_TEMPLATES = ("pod_template_file", "pod_template_dict", "full_pod_spec")

#: How many earlier tries are searched for a job still running (``reattach_on_restart``).
MAX_REATTACH_LOOKBACK = 10

#: ``(dag_id, task_id, class name, parameters given, problem)``: what an operator made
#: while ``dispatcher airflow check`` parses DAGs tells it (``dispatcher.airflow.check``).
CheckReport = Callable[[str | None, str, str, Mapping[str, Any], str | None], None]

#: Set by ``dispatcher airflow check`` while it parses DAGs: each operator reports the
#: parameters it was given and its parse-time problem to it instead of raising, so that
#: one run lists every task's refusals.
CHECKING: ContextVar[CheckReport | None] = ContextVar("dispatcher_airflow_check", default=None)


class DispatcherJobFailed(AirflowException):
    """The job did not succeed; ``job`` is the dispatcher's view of it, ``failure`` its
    classification (``oom-killed``, ``exit-code``, ``image-pull``, ``unschedulable``...)."""

    def __init__(self, message: str, job: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.job = dict(job)
        self.failure: str | None = job.get("failure")


class DispatcherPodOperator(BaseOperator):
    """Run a container wherever kube-dispatcher routes it; a KubernetesPodOperator stand-in.

    Takes KubernetesPodOperator's parameters (models like ``k8s.V1Volume`` or plain
    dicts): ``image``, ``name``, ``namespace``, ``cmds``, ``arguments``, ``env_vars``,
    ``secrets``, ``labels``, ``annotations``, ``container_resources`` (or the older
    ``resources``), ``image_pull_policy``, ``image_pull_secrets``, ``node_selector``,
    ``tolerations``, ``affinity``, ``volumes``, ``volume_mounts``,
    ``service_account_name``, ``priority_class_name``, ``startup_timeout_seconds``,
    ``schedule_timeout_seconds``, ``active_deadline_seconds``, ``on_finish_action``,
    ``termination_message_policy``, ``get_logs``, ``do_xcom_push``, ``deferrable``,
    ``skip_on_exit_code``, ``reattach_on_restart``, ``poll_interval``; the pod fields
    ``env_from``, ``configmaps``, ``init_containers``, ``ports``, ``security_context``,
    ``container_security_context``, ``termination_grace_period``,
    ``automount_service_account_token``, ``host_aliases``, ``dnspolicy``, ``dns_config``,
    ``hostname``, ``subdomain``, ``runtime_class_name``; and, as routing hints,
    ``in_cluster``, ``kubernetes_conn_id``, ``cluster_context``, ``config_file``. Templates
    render as in KPO, inside Kubernetes model objects too. See
    ``docs/airflow-migration.md`` for each KPO parameter.

    Added:

    :param dispatcher_conn_id: a connection of type ``dispatcher``.
    :param gpus: GPUs the task needs (or set ``nvidia.com/gpu`` in container_resources).
    :param gpu_model: e.g. ``"A100"``; matched against the nodes' GPU model.
    :param requirements: routing requirements: ``gpus``, ``gpu_model``, ``region``,
        ``cluster_selector``, ``allowed_clusters``, ``max_cost_per_hour``, ``priority``.
    :param wait_timeout: seconds one long poll may be held (the connection's by default).
    :param acknowledge: tell the dispatcher it may forget the job once its outcome is read.

    With ``do_xcom_push=True`` the task's return value is the JSON the container wrote
    to ``/airflow/xcom/return.json`` (KPO's contract: the pod gets a small sidecar that
    hands the file over through its log; see docs/airflow-migration.md), or, if it wrote
    one, the JSON of its termination message (``/dev/termination-log``).
    """

    template_fields: Sequence[str] = (
        "image",
        "name",
        "namespace",
        "cmds",
        "arguments",
        "env_vars",
        "labels",
        "annotations",
        "container_resources",
        "volumes",
        "volume_mounts",
        "node_selector",
        "service_account_name",
        "priority_class_name",
        "hostname",
        "env_from",
        "configmaps",
        "pod_template_file",
        "pod_template_dict",
        "kubernetes_conn_id",
        "cluster_context",
        "config_file",
        "requirements",
        "gpu_model",
        "dispatcher_conn_id",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {
        "env_vars": "py",
        "container_resources": "py",
        "requirements": "py",
    }
    ui_color = "#b9e0f7"
    #: The job's console page and the Grafana dashboard for its cluster (``links``).
    operator_extra_links = (DispatcherConsoleLink(), GrafanaClusterLink())
    #: The cluster the job last ran on (the Grafana link's filter); set by ``_seen``.
    job_cluster: str | None = None
    #: With ``do_xcom_push``, the pod gets the XCom sidecar that hands over
    #: ``/airflow/xcom/return.json`` (``dispatcher.core.xcom``).
    xcom_from_file: bool = True
    #: Set in ``__init__`` with the other ``POD_TEMPLATES`` parameters.
    pod_template_file: str | None
    pod_template_dict: dict[str, Any] | None
    full_pod_spec: Any

    def __init__(
        self,
        *,
        image: str | None = None,
        name: str | None = None,
        namespace: str | None = None,
        cmds: list[str] | None = None,
        arguments: list[str] | None = None,
        env_vars: list[Any] | dict[str, str] | None = None,
        secrets: list[Any] | None = None,
        pod_runtime_info_envs: list[Any] | None = None,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        container_resources: Any = None,
        resources: Any = None,
        image_pull_policy: str | None = None,
        image_pull_secrets: Any = None,
        node_selector: dict[str, str] | None = None,
        tolerations: list[Any] | None = None,
        affinity: Any = None,
        volumes: list[Any] | None = None,
        volume_mounts: list[Any] | None = None,
        service_account_name: str | None = None,
        priority_class_name: str | None = None,
        startup_timeout_seconds: int = 120,
        schedule_timeout_seconds: int | None = None,
        active_deadline_seconds: int | None = None,
        on_finish_action: Any = "delete_pod",
        is_delete_operator_pod: bool | None = None,
        termination_message_policy: str | None = None,
        get_logs: bool = True,
        do_xcom_push: bool = False,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        skip_on_exit_code: int | Container[int] | None = None,
        reattach_on_restart: bool = True,
        poll_interval: float = 2.0,
        container_name_log_prefix_enabled: bool = True,
        env_from: list[Any] | None = None,
        configmaps: list[str] | str | None = None,
        init_containers: list[Any] | None = None,
        ports: list[Any] | None = None,
        security_context: Any = None,
        container_security_context: Any = None,
        termination_grace_period: int | None = None,
        automount_service_account_token: bool | None = None,
        host_aliases: list[Any] | None = None,
        dnspolicy: str | None = None,
        dns_config: Any = None,
        hostname: str | None = None,
        subdomain: str | None = None,
        runtime_class_name: str | None = None,
        pod_template_file: str | None = None,
        pod_template_dict: dict[str, Any] | None = None,
        full_pod_spec: Any = None,
        in_cluster: bool | None = None,
        kubernetes_conn_id: str | None = None,
        cluster_context: str | None = None,
        config_file: str | None = None,
        dispatcher_conn_id: str = DEFAULT_CONN_ID,
        gpus: int | None = None,
        gpu_model: str | None = None,
        requirements: Any = None,
        wait_timeout: float | None = None,
        acknowledge: bool = True,
        **kwargs: Any,
    ) -> None:
        call = dict(locals())
        checking = CHECKING.get()
        task_id = kwargs.get("task_id")
        super().__init__(
            do_xcom_push=do_xcom_push,
            **_kpo_only_removed(kwargs, refuse=checking is None),
        )
        _require(
            task_id,
            image=image,
            templated=bool(pod_template_file or pod_template_dict or full_pod_spec is not None)
            or self._template_elsewhere(),
            both_resources=None not in (container_resources, resources),
        )
        if is_delete_operator_pod is not None and on_finish_action == "delete_pod":
            on_finish_action = "delete_pod" if is_delete_operator_pod else "keep_pod"
        self.image = image
        self.name = name
        self.namespace = namespace
        self.cmds = cmds or []
        self.arguments = arguments or []
        self.env_vars = env_vars or []
        self.secrets = secrets or []
        self.pod_runtime_info_envs = pod_runtime_info_envs or []
        self.labels = labels or {}
        self.annotations = annotations or {}
        self.container_resources = container_resources if resources is None else resources
        self.image_pull_policy = image_pull_policy
        self.image_pull_secrets = image_pull_secrets
        self.node_selector = node_selector or {}
        self.tolerations = tolerations or []
        self.affinity = affinity
        self.volumes = volumes or []
        self.volume_mounts = volume_mounts or []
        self.service_account_name = service_account_name
        self.priority_class_name = priority_class_name
        self.startup_timeout_seconds = startup_timeout_seconds
        self.schedule_timeout_seconds = schedule_timeout_seconds
        self.active_deadline_seconds = active_deadline_seconds
        self.on_finish_action = parameters.plain(on_finish_action)
        self.termination_message_policy = termination_message_policy
        self.get_logs = get_logs
        self.deferrable = deferrable
        self.skip_on_exit_code = _exit_codes(skip_on_exit_code)
        self.reattach_on_restart = reattach_on_restart
        self.poll_interval = poll_interval
        self.container_name_log_prefix_enabled = container_name_log_prefix_enabled
        # Pod fields of the task spec and the parameters that chose the cluster, which
        # become routing hints (parameters.SPEC_PARAMETERS), and the pod templates: each
        # a parameter above.
        for parameter in (*parameters.SPEC_PARAMETERS, *POD_TEMPLATES):
            setattr(self, parameter, call[parameter])
        self.dispatcher_conn_id = dispatcher_conn_id
        self.gpus = gpus
        self.gpu_model = gpu_model
        self.requirements = requirements
        self.wait_timeout = wait_timeout
        self.acknowledge = acknowledge
        self.job_id: str | None = None
        if checking is None:
            self._check_at_parse_time()
        else:
            self._report_to(checking, _given(call))

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        """``BaseOperator.partial`` (dynamic task mapping), refusing what the constructor
        refuses, with the same explanation, when the DAG is parsed."""
        checking = CHECKING.get()
        partial = super().partial(**_kpo_only_removed(kwargs, refuse=checking is None))
        if checking is not None:
            dag = partial.kwargs.get("dag")
            name = f"{cls.__name__}.partial"
            checking(getattr(dag, "dag_id", None), str(kwargs.get("task_id")), name, kwargs, None)
        return partial

    def _report_to(self, checking: CheckReport, given: Mapping[str, Any]) -> None:
        """Tell ``dispatcher airflow check`` what this task was given, and the problem
        its parse-time check found, if any."""
        problem = None
        try:
            self._check_at_parse_time()
        except AirflowException as exc:
            problem = str(exc)
        dag_id = self.dag_id if self.has_dag() else None  # type: ignore[no-untyped-call]
        kind = getattr(self, "custom_operator_name", None) or type(self).__name__
        checking(dag_id, self.task_id, kind, given, problem)

    # ----- the task spec ------------------------------------------------------------
    def _check_at_parse_time(self) -> None:
        """Refuse a spec the dispatcher would refuse, unless a template or an XCom still
        has to fill it in (then it is checked when the task runs)."""
        values = [getattr(self, field) for field in self.template_fields]
        values += [self.secrets, self.tolerations, self.affinity, self.pod_runtime_info_envs]
        values += [self.full_pod_spec]
        values += list(self._spec_parameters().values())
        # Models as JSON, so that a template inside a V1EnvVar counts as one.
        if parameters.has_unresolved([parameters.plain(v) for v in values]):
            return
        self.build_spec()

    def render_template(
        self,
        content: Any,
        context: Context,
        jinja_env: Any = None,
        seen_oids: set[int] | None = None,
    ) -> Any:
        """Airflow's rendering, which also goes inside Kubernetes model objects
        (``k8s.V1EnvVar(value="{{ ds }}")``, a ``V1ResourceRequirements`` whose limits
        come from ``params``, a ``V1Volume`` and the dicts and models nested in it).

        A model is rendered as the API's JSON (what the task spec holds): every string
        in it, at any depth, is a template, and the DAG's object, shared by every run and
        every mapped instance, is left as it is. A rendered value the dispatcher would
        refuse fails the task when it runs, with the field's path, when the spec is
        built.
        """
        if _is_model(content):
            content = parameters.plain(content)
        return super().render_template(content, context, jinja_env, seen_oids)

    def build_spec(self, context: Context | None = None) -> dict[str, Any]:
        """The task spec this operator submits; with ``context``, the task instance's
        idempotency key and KPO-style identity labels are added.

        Raises ``AirflowFailException`` listing every problem: the dispatcher would
        refuse the spec, and retrying cannot change that.
        """
        try:
            spec = self._spec(context)
            parameters.validate_spec(spec, task_id=self.task_id)
        except (SpecError, ValueError) as exc:
            raise AirflowFailException(f"{self.task_id!r}: {exc}") from None
        return spec

    def _spec_parameters(self) -> dict[str, Any]:
        """The pod field and routing hint parameters (``parameters.SPEC_PARAMETERS``)."""
        return {name: getattr(self, name) for name in sorted(parameters.SPEC_PARAMETERS)}

    def _spec(self, context: Context | None) -> dict[str, Any]:
        values = self._spec_parameters()
        pod_fields = parameters.pod_fields(values)
        # A Secret injecting every key extends env_from, after env_from and configmaps.
        env_from: list[dict[str, Any]] = list(pod_fields.pop("env_from", []))
        env, secret_volumes, secret_mounts = parameters.secrets_to_spec(self.secrets, env_from)
        env_vars = parameters.plain(self.env_vars)
        if isinstance(env_vars, Mapping):
            env_vars = [{"name": k, "value": v} for k, v in env_vars.items()]
        labels = dict(self.labels)
        spec: dict[str, Any] = {
            "image": self.image,
            "name": self.name,
            "namespace": self.namespace,
            "cmds": list(self.cmds),
            "arguments": list(self.arguments),
            "env_vars": [*env_vars, *parameters.plain(self.pod_runtime_info_envs), *env],
            "labels": labels,
            "annotations": dict(self.annotations),
            "container_resources": parameters.container_resources(self.container_resources),
            "image_pull_policy": self.image_pull_policy,
            "image_pull_secrets": parameters.plain(self.image_pull_secrets),
            "node_selector": dict(self.node_selector),
            "tolerations": parameters.plain(self.tolerations),
            "affinity": parameters.plain(self.affinity),
            "volumes": [parameters.api_object(v) for v in self.volumes] + secret_volumes,
            "volume_mounts": [parameters.api_object(m) for m in self.volume_mounts] + secret_mounts,
            "service_account_name": self.service_account_name,
            "priority_class_name": self.priority_class_name,
            "startup_timeout_seconds": self.startup_timeout_seconds,
            "schedule_timeout_seconds": self.schedule_timeout_seconds,
            "active_deadline_seconds": self.active_deadline_seconds,
            "on_finish_action": self.on_finish_action,
            "termination_message_policy": self.termination_message_policy,
            "requirements": parameters.requirements(
                parameters.plain(self.requirements),
                gpus=self.gpus,
                gpu_model=self.gpu_model,
                hints=parameters.cluster_hints(values),
            ),
            "env_from": env_from,
            "xcom_sidecar": (self.do_xcom_push and self.xcom_from_file) or None,
            **pod_fields,
        }
        spec = {k: v for k, v in spec.items() if v is not None and v not in ([], {})}
        template = self._template()
        if template:
            spec = parameters.over_template(template, spec)
        spec.setdefault("name", self.task_id)
        owner = parameters.dag_owner(getattr(self, "owner", None))
        if owner is not None:
            # The fair-share tenant of a task submitted without authentication.
            spec["requirements"] = {"owner": owner, **(spec.get("requirements") or {})}
        if context is not None:
            ti = context["ti"]
            identity = (ti.dag_id, ti.task_id, ti.run_id, ti.map_index, ti.try_number)
            spec["labels"] = {**parameters.airflow_labels(*identity), **spec.get("labels", {})}
            spec["idempotency_key"] = parameters.idempotency_key(*identity)
        return spec

    # ----- pod templates --------------------------------------------------------------
    def _template_elsewhere(self) -> bool:
        """Whether a template this class does not take may give the image (a subclass's)."""
        return False

    def _template(self) -> dict[str, Any]:
        """The task spec fields of the pod template, as KPO layers it: ``pod_template_file``
        (or else ``pod_template_dict``), then ``full_pod_spec`` over it; the operator's
        own parameters go over both (``_spec``)."""
        fields: dict[str, Any] = {}
        if self.pod_template_file:
            document = _read_pod_template(self.pod_template_file, self._dag_folder())
            fields = parameters.pod_template_fields(document, where="pod_template_file")
        elif self.pod_template_dict:
            fields = parameters.pod_template_fields(
                self.pod_template_dict, where="pod_template_dict"
            )
        if self.full_pod_spec is not None:
            over = parameters.pod_template_fields(self.full_pod_spec, where="full_pod_spec")
            fields = parameters.over_template(fields, over)
        return fields

    def _dag_folder(self) -> Path | None:
        if not self.has_dag():  # type: ignore[no-untyped-call]
            return None
        fileloc = getattr(self.dag, "fileloc", None)
        return Path(fileloc).parent if fileloc else None

    # ----- running ------------------------------------------------------------------
    @cached_property
    def hook(self) -> DispatcherHook:
        return DispatcherHook(self.dispatcher_conn_id)

    def _client(self) -> DispatcherClient:
        """A client of its own, for a helper thread or a signal handler."""
        return self.hook.new_client()

    def _say(self, line: str) -> None:
        self.log.info("%s", line)

    def _watch(self, progress: Progress) -> Watch:
        prefix = CONTAINER_NAME if self.container_name_log_prefix_enabled else None
        return Watch(progress, get_logs=self.get_logs, prefix=prefix)

    def execute(self, context: Context) -> Any:
        spec = self.build_spec(context)
        job = self._submit(spec, context)
        self._seen(job)
        watch = self._watch(Progress(namespace=spec.get("namespace")))
        if self.deferrable and not is_finished(job):
            for line in watch.on_job(job).say:
                self._say(line)
            self.defer(
                trigger=DispatcherJobTrigger(
                    job_id=job["id"],
                    dispatcher_conn_id=self.dispatcher_conn_id,
                    progress=watch.progress.to_dict(),
                    get_logs=self.get_logs,
                    log_prefix=watch.prefix.strip("[] ") or None,
                    poll_interval=self.poll_interval,
                    wait_timeout=self.wait_timeout,
                ),
                method_name="execute_complete",
            )
        return self._conclude(self._follow_to_end(job, watch))

    def _follow_to_end(self, job: dict[str, Any], watch: Watch) -> dict[str, Any]:
        """Follow ``job`` from this thread until it is finished and its log logged."""
        try:
            finished = follow_job(
                job,
                watch,
                client=self._client,
                say=self._say,
                poll_interval=self.poll_interval,
                wait_timeout=self.wait_timeout or self.hook.settings.wait_timeout,
            )
        except ApiClientError as exc:
            raise AirflowException(f"lost track of job {job['id']}: {exc}") from exc
        catch_up(watch, client=self._client, say=self._say)
        return finished

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Resumed after ``DispatcherJobTrigger`` fired: log what the trigger could not,
        then succeed or fail as the job did."""
        if event.get("status") != "finished":
            raise AirflowException(
                f"lost track of job {event.get('job_id')}: {event.get('message')}"
            )
        job = event["job"]
        self._seen(job)
        watch = self._watch(Progress.from_dict(event.get("progress")))
        for line in watch.on_job(job).say:
            self._say(line)
        watch.caught_up = bool(event.get("caught_up"))
        catch_up(watch, client=self._client, say=self._say)
        return self._conclude(job)

    def _submit(self, spec: Mapping[str, Any], context: Context) -> dict[str, Any]:
        """Submit, or re-attach: the same try's key is the same job; with
        ``reattach_on_restart``, a job of an earlier try still running (its worker died)
        is taken over instead of starting a second pod."""
        ti = context["ti"]
        hook = self.hook
        try:
            if self.reattach_on_restart and ti.try_number > 1:
                lowest = max(0, ti.try_number - 1 - MAX_REATTACH_LOOKBACK)
                for earlier in range(ti.try_number - 1, lowest, -1):
                    key = parameters.idempotency_key(
                        ti.dag_id, ti.task_id, ti.run_id, ti.map_index, earlier
                    )
                    previous = hook.find(key)
                    if previous is None:
                        continue
                    if not is_finished(previous):
                        self.log.info(
                            "Re-attaching to job %s of try %d, still %s",
                            previous["id"],
                            earlier,
                            previous["state"],
                        )
                        return previous
                    break
            job, created = hook.submit(spec)
        except ApiClientError as exc:
            if exc.status == 422:
                raise AirflowFailException(f"the dispatcher refused the task spec: {exc}") from exc
            raise AirflowException(f"cannot submit to the dispatcher: {exc}") from exc
        if created:
            self.log.info(
                "Submitted job %s (idempotency key %s)", job["id"], spec.get("idempotency_key")
            )
        else:
            self.log.info(
                "Re-attached to job %s, submitted earlier by this try; it is %s",
                job["id"],
                job["state"],
            )
        return job

    def _seen(self, job: Mapping[str, Any]) -> None:
        """Remember the job, and where it runs, for ``on_kill`` and the extra links."""
        self.job_id = str(job["id"])
        self.job_cluster = job.get("cluster") or self.job_cluster

    def _conclude(self, job: Mapping[str, Any]) -> Any:
        """The task's return value, or the exception it fails with."""
        self._seen(job)
        state = job.get("state")
        if state == "succeeded":
            started = job.get("running_at") or job.get("submitted_at") or 0.0
            took = format_duration((job.get("finished_at") or started) - started)
            self.log.info("Job %s succeeded on %s after %s", job["id"], job.get("cluster"), took)
            result = self._xcom(job) if self.do_xcom_push else None
            self._acknowledge(job)
            return result
        message = failure_message(job)
        self._acknowledge(job)
        if (
            state == "failed"
            and job.get("failure") == "exit-code"
            and job.get("exit_code") in self.skip_on_exit_code
        ):
            raise AirflowSkipException(f"skipped, as skip_on_exit_code says: {message}")
        if state == "rejected":
            raise AirflowFailException(message)
        raise DispatcherJobFailed(message, job)

    def _xcom(self, job: Mapping[str, Any]) -> Any:
        """The return value: the JSON termination message if the container wrote one,
        else ``/airflow/xcom/return.json`` (KPO's contract), read through the dispatcher
        from the XCom sidecar's log before the job is acknowledged."""
        result = job.get("result")
        if result is not None or not self.xcom_from_file:
            return result
        try:
            value = self.hook.xcom(str(job["id"]))
        except ApiClientError as exc:
            raise AirflowException(
                f"job {job['id']} succeeded but its /airflow/xcom/return.json could not be "
                f"read: {exc}"
            ) from exc
        if value is None:
            self.log.info("The container wrote no /airflow/xcom/return.json: no XCom value")
        return value

    def _acknowledge(self, job: Mapping[str, Any]) -> None:
        if not self.acknowledge:
            return
        try:
            self.hook.acknowledge(str(job["id"]))
        except ApiClientError as exc:
            self.log.warning("Could not acknowledge job %s: %s", job["id"], exc)

    def on_kill(self) -> None:
        """The task is being killed: cancel the job, which removes its pod."""
        if not self.job_id:
            return
        try:
            with self._client() as client:
                job = client.cancel(self.job_id)
        except ApiClientError as exc:
            self.log.error("Could not cancel job %s: %s", self.job_id, exc)
            return
        self.log.info("Cancelled job %s (%s)", self.job_id, job.get("state"))


def _kpo_only_removed(kwargs: dict[str, Any], *, refuse: bool = True) -> dict[str, Any]:
    """``kwargs`` less the KPO parameters this operator does not take: those without
    effect here, and refused ones that ask for nothing. Refused ones that do ask for
    something raise, all at once, each with why and what to use instead (unless
    ``refuse`` is off: ``dispatcher airflow check`` reports them itself)."""
    refused = parameters.refusals(kwargs)
    if refused and refuse:
        raise AirflowException(
            f"DispatcherPodOperator {kwargs.get('task_id')!r} cannot honour these "
            "KubernetesPodOperator parameters:\n  - " + "\n  - ".join(refused)
        )
    dropped = {*parameters.REFUSED, *parameters.NO_EFFECT}
    return {k: v for k, v in kwargs.items() if k not in dropped}


def _require(task_id: Any, *, image: str | None, templated: bool, both_resources: bool) -> None:
    if both_resources:
        raise AirflowException(
            f"{task_id!r}: resources is the old name of container_resources; set one"
        )
    if image is None and not templated:
        raise AirflowException(
            f"{task_id!r}: image is required (or a pod template whose container has one)"
        )


#: A pod template file larger than this is refused (a pod is at most 1.5 MiB in etcd).
MAX_POD_TEMPLATE_BYTES = 1024 * 1024


def _read_pod_template(name: str, dag_folder: Path | None) -> Any:
    """The YAML (or JSON) document of ``pod_template_file``. A relative path is looked up
    in the DAG's folder, then in the working directory (where KPO looks). A missing,
    unreadable or malformed file is a ``ValueError`` naming it; KPO would log a warning
    and run a pod without the template, which here would be a different task."""
    path = Path(name).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path]
    if not path.is_absolute() and dag_folder is not None:
        candidates.insert(0, dag_folder / path)
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        looked = ", ".join(str(c) for c in candidates)
        raise ValueError(f"pod_template_file {name!r}: no such file (looked for {looked})")
    try:
        if found.stat().st_size > MAX_POD_TEMPLATE_BYTES:
            raise ValueError(
                f"pod_template_file {str(found)!r} is larger than {MAX_POD_TEMPLATE_BYTES} bytes"
            )
        document = yaml.safe_load(found.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"pod_template_file {str(found)!r}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ValueError(f"pod_template_file {str(found)!r} is not valid YAML{at}") from None
    if not isinstance(document, Mapping):
        raise ValueError(
            f"pod_template_file {str(found)!r} holds no pod (a mapping with metadata and spec)"
        )
    return document


def _given(call: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters a constructor call set (``locals()`` on entry): named ones that
    differ from their defaults, and every keyword the signature does not name."""
    signature = inspect.signature(DispatcherPodOperator.__init__).parameters
    given = {
        name: value
        for name, value in call.items()
        if name in signature
        and name not in ("self", "kwargs")
        and not _is_default(value, signature[name].default)
    }
    return {**given, **call.get("kwargs", {})}


def _is_default(value: Any, default: Any) -> bool:
    try:
        return value is default or bool(value == default)
    except Exception:  # an object whose == is not a plain answer
        return False


def _is_model(value: Any) -> bool:
    """A Kubernetes client model object (either generation: plain classes up to 36.x,
    pydantic models from 37)."""
    return hasattr(value, "openapi_types") and hasattr(value, "attribute_map")


def _exit_codes(value: int | Container[int] | None) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    if isinstance(value, Sequence | set | frozenset):
        return tuple(int(v) for v in value)
    raise AirflowException("skip_on_exit_code must be an exit code or a list of them")
