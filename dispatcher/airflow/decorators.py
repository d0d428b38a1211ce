"""``@task.dispatcher`` and ``@task.dispatcher_cmd``: ``@task.kubernetes`` and
``@task.kubernetes_cmd`` run wherever kube-dispatcher routes them.

Registered through the provider entry point (``task-decorators`` in
``provider.get_provider_info``), so ``from airflow.sdk import task`` finds them; they
take every ``DispatcherPodOperator`` parameter.

- ``@task.dispatcher``: the function runs in the task's container. Its source (the
  decorators removed) and its arguments (pickled; dill with ``use_dill=True``) travel in
  two environment variables; the container's command is a short Python program that
  defines the function, calls it and writes its return value as JSON to the termination
  message, which is the task's return value (``do_xcom_push`` is on by default). As with
  ``@task.kubernetes``, the image must have Python (and ``dill`` for ``use_dill``), the
  function must import what it uses inside its body, and only the arguments it is given
  reach it (templated: pass ``"{{ ds }}"``, not a ``ds`` parameter).
- ``@task.dispatcher_cmd``: the function runs on the worker when the task starts and
  returns the container's command (a list of strings), or its arguments with
  ``args_only=True``.

No I/O of its own; the operator talks to the dispatcher.
"""

from __future__ import annotations

import base64
import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from airflow.sdk import Context
from airflow.sdk.bases.decorator import DecoratedOperator, TaskDecorator, task_decorator_factory

from dispatcher.airflow.operators import CHECKING, DispatcherPodOperator, _kpo_only_removed

__all__ = ["RESULT_PATH", "dispatcher_cmd_task", "dispatcher_task"]

log = logging.getLogger(__name__)

#: Where the container writes the function's return value: the termination message.
RESULT_PATH = "/dev/termination-log"
SOURCE_ENV = "DISPATCHER_TASK_SOURCE"
INPUT_ENV = "DISPATCHER_TASK_INPUT"
PICKLER_ENV = "DISPATCHER_TASK_PICKLER"
_TASK_ENV = (SOURCE_ENV, INPUT_ENV, PICKLER_ENV)

#: Runs in the container (``python -c BOOTSTRAP RESULT_PATH``): stdlib only. The
#: function's annotations are not evaluated (the names they use are the DAG file's).
BOOTSTRAP = f"""\
import __future__, base64, importlib, json, os, sys
pickler = importlib.import_module(os.environ["{PICKLER_ENV}"])
scope = {{"__name__": "__main__"}}
source = base64.b64decode(os.environ["{SOURCE_ENV}"])
flags = __future__.annotations.compiler_flag
exec(compile(source, "<task>", "exec", flags=flags, dont_inherit=True), scope)
call = pickler.loads(base64.b64decode(os.environ["{INPUT_ENV}"]))
result = scope[call["function"]](*call["args"], **call["kwargs"])
with open(sys.argv[1], "w") as out:
    json.dump(result, out)
"""

_OWN = ("cmds", "arguments")


def _template_fields(*groups: Sequence[str]) -> tuple[str, ...]:
    """The groups' fields in order, once each, less the command, which is generated."""
    return tuple(dict.fromkeys(f for group in groups for f in group if f not in _OWN))


def _env_list(env_vars: Any) -> list[Any]:
    if isinstance(env_vars, Mapping):
        return [{"name": k, "value": v} for k, v in env_vars.items()]
    return list(env_vars or [])


def _env_name(var: Any) -> Any:
    return var.get("name") if isinstance(var, Mapping) else getattr(var, "name", None)


class _DispatcherDecoratedOperator(DecoratedOperator, DispatcherPodOperator):
    custom_operator_name = "@task.dispatcher"
    template_fields: Sequence[str] = _template_fields(
        DecoratedOperator.template_fields, DispatcherPodOperator.template_fields
    )
    # The callable is not mutated; some objects cannot be deep-copied.
    shallow_copy_attrs: Sequence[str] = ("python_callable",)
    # The return value comes from the termination message (RESULT_PATH): no XCom sidecar.
    xcom_from_file = False

    def __init__(self, *, use_dill: bool = False, do_xcom_push: bool = True, **kwargs: Any) -> None:
        given = [name for name in _OWN if kwargs.get(name) is not None]
        if given:
            raise TypeError(
                f"@task.dispatcher takes no {' or '.join(given)}: the decorated function "
                "is what the container runs (use @task.dispatcher_cmd to return a command)"
            )
        self.use_dill = use_dill
        super().__init__(
            cmds=["python", "-c", BOOTSTRAP],
            arguments=[RESULT_PATH],
            do_xcom_push=do_xcom_push,
            **kwargs,
        )

    def _task_env(self) -> list[dict[str, str]]:
        pickler = importlib.import_module("dill" if self.use_dill else "pickle")
        call = {
            "function": self.python_callable.__name__,
            "args": list(self.op_args),
            "kwargs": dict(self.op_kwargs),
        }
        values = {
            SOURCE_ENV: str(self.get_python_source()).encode(),  # type: ignore[no-untyped-call]
            INPUT_ENV: pickler.dumps(call),
        }
        env = [{"name": k, "value": base64.b64encode(v).decode()} for k, v in values.items()]
        return [*env, {"name": PICKLER_ENV, "value": pickler.__name__}]

    def execute(self, context: Context) -> Any:
        own = [var for var in _env_list(self.env_vars) if _env_name(var) not in _TASK_ENV]
        self.env_vars = [*own, *self._task_env()]
        return super().execute(context)


class _DispatcherCmdDecoratedOperator(DecoratedOperator, DispatcherPodOperator):
    custom_operator_name = "@task.dispatcher_cmd"
    template_fields: Sequence[str] = _template_fields(
        DecoratedOperator.template_fields, DispatcherPodOperator.template_fields
    )
    shallow_copy_attrs: Sequence[str] = ("python_callable",)

    def __init__(self, *, args_only: bool = False, **kwargs: Any) -> None:
        given = [name for name in _OWN if kwargs.pop(name, None) is not None]
        if given:
            log.warning(
                "@task.dispatcher_cmd ignores %s: the decorated function returns the "
                "command (or, with args_only=True, its arguments)",
                " and ".join(given),
            )
        self.args_only = args_only
        # Replaced by the function's list when the task runs.
        super().__init__(cmds=["set-by-the-decorated-function"], **kwargs)

    def _command(self) -> list[str]:
        command = self.python_callable(*self.op_args, **self.op_kwargs)
        name = self.python_callable.__name__
        if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
            raise TypeError(f"{name} must return a list of strings, not {command!r}")
        if not command:
            raise ValueError(f"{name} returned an empty command")
        return command

    def execute(self, context: Context) -> Any:
        command = self._command()
        self.cmds, self.arguments = ([], command) if self.args_only else (command, [])
        return super().execute(context)


def _refuse_at_decoration(kwargs: dict[str, Any], decorator: str) -> None:
    """Refused parameters fail the DAG's import where the decorator is, as the operator's
    do: a mapped decorated task builds no operator until it runs. (``dispatcher airflow
    check`` reports them from the task instead.)"""
    if CHECKING.get() is None:
        _kpo_only_removed({"task_id": decorator, **kwargs})


def dispatcher_task(
    python_callable: Callable[..., Any] | None = None,
    multiple_outputs: bool | None = None,
    **kwargs: Any,
) -> TaskDecorator:
    """``@task.dispatcher``: run the decorated function in a container wherever the
    dispatcher routes it; takes ``DispatcherPodOperator``'s parameters (``image`` is
    required) and ``use_dill``."""
    _refuse_at_decoration(kwargs, "@task.dispatcher")
    return task_decorator_factory(
        python_callable=python_callable,
        multiple_outputs=multiple_outputs,
        decorated_operator_class=_DispatcherDecoratedOperator,
        **kwargs,
    )


def dispatcher_cmd_task(
    python_callable: Callable[..., Any] | None = None,
    multiple_outputs: bool | None = None,
    **kwargs: Any,
) -> TaskDecorator:
    """``@task.dispatcher_cmd``: the decorated function returns the container's command
    (``args_only=True``: its arguments, for the image's entrypoint); takes
    ``DispatcherPodOperator``'s parameters."""
    _refuse_at_decoration(kwargs, "@task.dispatcher_cmd")
    return task_decorator_factory(
        python_callable=python_callable,
        multiple_outputs=multiple_outputs,
        decorated_operator_class=_DispatcherCmdDecoratedOperator,
        **kwargs,
    )
