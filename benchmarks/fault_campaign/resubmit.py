"""The resubmitting client: another process that looks up a task the campaign already
submitted by its idempotency key, submits the same spec again (same key) and follows the
job until it reads it finished.

``python -m benchmarks.fault_campaign.resubmit --url URL [--url URL]`` reads the spec (JSON)
on stdin and writes its client-history lines (``type: request``, ``process: resubmitter``)
on stdout, one per HTTP attempt; the campaign appends them to the client history. It runs
until the job is finished or it is terminated.

I/O: HTTP to the dispatchers, stdin and stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.fault_campaign.records import stamp
from benchmarks.fault_campaign.workload import Replicas, follow


class _Stdout:
    def write(self, record: Mapping[str, Any]) -> None:
        print(json.dumps(stamp(record), sort_keys=True, default=str), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", action="append", required=True)
    args = parser.parse_args(argv)
    spec = json.loads(sys.stdin.read())
    replicas = Replicas(args.url, _Stdout(), "resubmitter")
    forever = float("inf")
    replicas.find(str(spec["idempotency_key"]), forever)
    answer = replicas.submit(spec, forever)
    if answer is not None and answer.status in (200, 201) and answer.body is not None:
        follow(replicas, str(spec["idempotency_key"]), str(answer.body["id"]), lambda: forever)
    replicas.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
