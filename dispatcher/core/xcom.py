"""KubernetesPodOperator's XCom contract across clusters; pure, no I/O.

A KPO task with ``do_xcom_push=True`` writes its return value as JSON to
``/airflow/xcom/return.json``. KPO reads it by ``exec``-ing ``cat`` in a sidecar, which
needs the worker to hold the pod's cluster credentials. Here the Airflow worker never has
them, so the file travels through the sidecar's log instead, read by the dispatcher through
the remote cluster's ``pods/log`` API:

1. The pod gets an ``emptyDir`` volume mounted at ``/airflow/xcom`` in the task container
   and in a *native sidecar* (an init container with ``restartPolicy: Always``,
   Kubernetes >= 1.29), which only sleeps.
2. When the task container has ended, the kubelet stops the sidecar with SIGTERM; its trap
   prints the file, base64-encoded in lines of 76, between two marker lines that name the
   pod, the end marker with the file's byte count, and exits 0. The pod then ends as the
   task container did.
3. ``parse_sidecar_log`` finds the last complete block of that pod in the sidecar's log,
   checks the byte count (a truncated log is an error, never a wrong value) and returns
   the JSON value; an absent or empty file is ``None``, as in KPO.

The log is the only channel: its size is bounded by the kubelet's log rotation
(``containerLogMaxSize``, 10 MiB by default; base64 adds a third), and by the dispatcher's
``max_xcom_bytes``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "READY",
    "XCOM_DIRECTORY",
    "XCOM_MOUNT",
    "XCOM_SIDECAR_NAME",
    "XCOM_VOLUME",
    "XComError",
    "parse_sidecar_log",
    "sidecar_command",
]

#: Where KPO's contract has the task write ``return.json``.
XCOM_DIRECTORY = "/airflow/xcom"
#: KPO's own sidecar name, so that ``kubectl logs -c airflow-xcom-sidecar`` reads the same.
XCOM_SIDECAR_NAME = "airflow-xcom-sidecar"
XCOM_VOLUME = "kube-dispatcher-xcom"
XCOM_MOUNT = {"name": XCOM_VOLUME, "mountPath": XCOM_DIRECTORY}

_BEGIN = "KD-XCOM-BEGIN"
_END = "KD-XCOM-END"
_EMPTY = "KD-XCOM-EMPTY"
#: Printed once the trap is set: from then on, SIGTERM makes the sidecar print the file.
READY = "KD-XCOM-READY"

# SIGTERM arrives while ``wait`` waits for a short ``sleep``, so the trap runs at once
# (a shell defers traps until its foreground command ends). ``base64`` and ``wc`` are in
# busybox (alpine) and coreutils alike.
_SCRIPT = """\
emit() {{
  f={directory}/return.json
  if [ -s "$f" ]; then
    echo "{begin} {pod}"
    base64 "$f"
    echo "{end} {pod} $(wc -c < "$f")"
  else
    echo "{empty} {pod}"
  fi
  exit 0
}}
trap emit TERM INT
echo "{ready} {pod}"
while true; do sleep 1 & wait $!; done
"""


class XComError(ValueError):
    """The sidecar's log holds no readable value (truncated, corrupt, too big, not JSON)."""


def sidecar_command(pod: str, directory: str = XCOM_DIRECTORY) -> list[str]:
    """The sidecar's command: sleep until SIGTERM, then print ``return.json`` for ``pod``.

    ``directory`` is a parameter for tests, which run the script on a local directory.
    """
    script = _SCRIPT.format(
        directory=directory, pod=pod, begin=_BEGIN, end=_END, empty=_EMPTY, ready=READY
    )
    return ["sh", "-c", script]


@dataclass
class _Block:
    chunks: list[str]
    size: int = 0


def parse_sidecar_log(lines: Iterable[str], pod: str, *, max_bytes: int) -> Any:
    """The value ``pod``'s sidecar printed: JSON, or ``None`` for an absent or empty file.

    Raises ``XComError`` when the log has no complete block for ``pod`` (the sidecar did
    not get to print, or the log was rotated), the block is corrupt, the file is larger
    than ``max_bytes``, or it is not JSON.
    """
    begin, end, empty = f"{_BEGIN} {pod}", f"{_END} {pod} ", f"{_EMPTY} {pod}"
    limit = (max_bytes + 2) // 3 * 4  # base64 of max_bytes
    found: tuple[str, Any] | None = None  # ("empty", None) or ("value", bytes)
    block: _Block | None = None
    too_big = False
    for raw in lines:
        line = raw.strip()
        if line == begin:
            block, too_big = _Block([]), False
        elif line == empty:
            block, found = None, ("empty", None)
        elif block is not None and line.startswith(end):
            count = line[len(end) :].strip()
            if too_big:
                raise XComError(
                    f"return.json is larger than the dispatcher's max_xcom_bytes ({max_bytes})"
                )
            found = ("value", (b"".join(_decode(c) for c in block.chunks), count))
            block = None
        elif block is not None:
            block.size += len(line)
            if block.size > limit:
                too_big = True
                block.chunks.clear()
            elif not too_big:
                block.chunks.append(line)
    if found is None:
        raise XComError(
            f"the log of container {XCOM_SIDECAR_NAME} of pod {pod} holds no complete "
            "return.json (the sidecar was not stopped normally, or its log was rotated)"
        )
    if found[0] == "empty":
        return None
    data, count = found[1]
    if not count.isdigit() or int(count) != len(data):
        raise XComError(
            f"return.json of pod {pod} is {count} bytes but {len(data)} were read: "
            "the sidecar's log is incomplete"
        )
    if len(data) > max_bytes:
        raise XComError(
            f"return.json is {len(data)} bytes, larger than max_xcom_bytes ({max_bytes})"
        )
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise XComError(f"return.json of pod {pod} is not JSON: {exc}") from None


def _decode(chunk: str) -> bytes:
    try:
        return base64.b64decode(chunk, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise XComError(f"the sidecar's log is corrupt: {exc}") from None
