"""Kubernetes resource quantities, parsed exactly; pure, no I/O.

The dispatcher compares what a task asks for with what nodes have, so quantities are
turned into exact integers in one canonical unit per resource, the way the scheduler
compares them: millicores for ``cpu``, bytes for ``memory``, ``ephemeral-storage`` and
``hugepages-*``, plain counts for ``pods`` and extended resources (``nvidia.com/gpu``).
Like Kubernetes' ``MilliValue()``/``Value()``, a fraction of the unit rounds *up*.

Grammar (k8s.io/apimachinery/pkg/api/resource)::

    quantity  ::= sign? number suffix?
    number    ::= digits | digits "." digits? | "." digits
    suffix    ::= Ki | Mi | Gi | Ti | Pi | Ei        binary SI, powers of 1024
               |  n | u | m | k | M | G | T | P | E  decimal SI, powers of 1000
               |  ("e" | "E") sign? digits         decimal exponent
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from fractions import Fraction

__all__ = [
    "CPU",
    "EPHEMERAL_STORAGE",
    "GPU",
    "MAX_AMOUNT",
    "MEMORY",
    "PODS",
    "add_requests",
    "describe_amount",
    "format_amount",
    "is_byte_resource",
    "parse_quantity",
    "pod_requests_with_init",
    "to_amount",
]

CPU = "cpu"
MEMORY = "memory"
EPHEMERAL_STORAGE = "ephemeral-storage"
PODS = "pods"
GPU = "nvidia.com/gpu"

#: Kubernetes stores quantities as int64; anything larger is refused, not wrapped.
MAX_AMOUNT = 2**63 - 1

_MAX_TEXT = 64
_MAX_EXPONENT = 30

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}
# The exponent alternative comes first so that "1E3" is 1000 while a bare "1E" is 1 exa.
_QUANTITY = re.compile(
    r"(?P<sign>[+-]?)(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:[eE](?P<exponent>[+-]?[0-9]+)|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]))?"
)
_EXAMPLES = "e.g. 500m, 2, 1.5Gi, 64Mi, 1e3"


def parse_quantity(value: str | int | float) -> Fraction:
    """The exact value of a quantity (``"1.5Gi"`` -> ``Fraction(1610612736)``).

    Raises ``ValueError`` with a message fit for a DAG author. ``int`` and ``float``
    are accepted because YAML turns ``cpu: 2`` and ``cpu: 0.5`` into numbers.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a Kubernetes quantity: {value!r} ({_EXAMPLES})")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a Kubernetes quantity: {value!r} ({_EXAMPLES})")
        value = repr(value)
    text = value.strip()
    if len(text) > _MAX_TEXT:
        raise ValueError(f"quantity is longer than {_MAX_TEXT} characters")
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {text!r} ({_EXAMPLES})")
    number = Fraction(match["number"])
    if match["exponent"] is not None:
        exponent = int(match["exponent"])
        if abs(exponent) > _MAX_EXPONENT:
            raise ValueError(f"quantity exponent out of range: {text!r}")
        number *= Fraction(10) ** exponent
    elif match["suffix"] in _BINARY:
        number *= _BINARY[match["suffix"]]
    else:
        number *= _DECIMAL[match["suffix"] or ""]
    return -number if match["sign"] == "-" else number


def is_byte_resource(resource: str) -> bool:
    """Whether amounts of ``resource`` are bytes (shown as Ki/Mi/Gi)."""
    return resource in (MEMORY, EPHEMERAL_STORAGE) or resource.startswith("hugepages-")


def to_amount(resource: str, value: str | int | float) -> int:
    """A quantity of ``resource`` in its canonical integer unit, rounded up.

    Millicores for ``cpu``; for every other resource the plain value (bytes, counts).
    Negative quantities and values beyond int64 are refused.
    """
    quantity = parse_quantity(value)
    if quantity < 0:
        raise ValueError(f"quantity must not be negative: {value!r}")
    scaled = quantity * 1000 if resource == CPU else quantity
    amount = math.ceil(scaled)
    if amount > MAX_AMOUNT:
        raise ValueError(f"quantity is too large: {value!r}")
    return amount


def format_amount(resource: str, amount: int) -> str:
    """A canonical amount as a short quantity string: ``500m``, ``4``, ``3Gi``, ``8``."""
    if resource == CPU:
        return str(amount // 1000) if amount % 1000 == 0 else f"{amount}m"
    if is_byte_resource(resource) and amount:
        for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
            if amount % _BINARY[suffix] == 0:
                return f"{amount // _BINARY[suffix]}{suffix}"
    return str(amount)


def describe_amount(resource: str, amount: int) -> str:
    """An amount in words a DAG author reads at a glance: ``16 GPUs``, ``500m CPU``."""
    if resource == CPU:
        if amount % 1000 == 0:
            count = amount // 1000
            return f"{count} CPU" if count == 1 else f"{count} CPUs"
        return f"{amount}m CPU"
    if resource == GPU:
        return "1 GPU" if amount == 1 else f"{amount} GPUs"
    if resource == PODS:
        return "1 pod slot" if amount == 1 else f"{amount} pod slots"
    if is_byte_resource(resource):
        return f"{format_amount(resource, amount)} {resource}"
    return f"{amount} {resource}"


def add_requests(total: dict[str, int], more: Mapping[str, int]) -> None:
    """Add ``more`` (resource -> amount) into ``total``."""
    for name, amount in more.items():
        total[name] = total.get(name, 0) + amount


def pod_requests_with_init(
    containers: Mapping[str, int], init_containers: Iterable[tuple[Mapping[str, int], bool]]
) -> dict[str, int]:
    """A pod's requests as the scheduler counts them (``PodRequests``): the containers'
    sum, raised to the peak while one init container runs; an init container that is a
    sidecar (``(requests, True)``: ``restartPolicy: Always``) runs alongside everything
    after it and is added to the sum."""
    total = dict(containers)
    sidecars: dict[str, int] = {}
    peak: dict[str, int] = {}
    for requests, sidecar in init_containers:
        if sidecar:
            add_requests(total, requests)
            add_requests(sidecars, requests)
            during = dict(sidecars)
        else:
            during = dict(requests)
            add_requests(during, sidecars)
        for name, amount in during.items():
            peak[name] = max(peak.get(name, 0), amount)
    for name, amount in peak.items():
        total[name] = max(total.get(name, 0), amount)
    return total
