"""``python -m benchmarks.fault_campaign [--minutes N] [--seed S] [--out DIR]``: one fault
campaign on the local stack (started if it is not up, stopped afterwards unless it was up
or ``KD_STACK_KEEP=1``); prints the seed first and the checker's table last; exits 1 if the
checker found a violation.

Runs on its own stack instance unless ``KD_STACK_DIR``/``KD_STACK_PORT_BASE`` say otherwise
(defaults: ``/tmp/kd-stack-campaign``, 32500).

I/O: everything ``campaign.run_campaign`` does.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("KD_STACK_DIR", "/tmp/kd-stack-campaign")  # noqa: S108 - a scratch stack
os.environ.setdefault("KD_STACK_PORT_BASE", "32500")

from benchmarks.fault_campaign.campaign import CampaignConfig, run_campaign
from tests.stack.launcher import Stack


def main() -> int:
    parser = argparse.ArgumentParser(description="A Jepsen-style fault campaign on the stack.")
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=None, help="default: a random seed")
    parser.add_argument("--out", type=Path, default=None, help="the history folder")
    parser.add_argument("--rate", type=float, default=1.0, help="tasks per second")
    parser.add_argument("--fault-scale", type=float, default=1.0)
    parser.add_argument("--drain-seconds", type=float, default=180.0)
    parser.add_argument("--failover-bound", type=float, default=60.0)
    parser.add_argument("--unreachable-policy", default="wait", help="wait | relaunch:SECONDS")
    parser.add_argument(
        "--no-proxy-faults",
        action="store_true",
        help="reach gpu-h100 directly, without the fault proxy's slow, 429 and 5xx periods",
    )
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    print(f"fault campaign seed: {seed}", flush=True)
    stack = Stack()
    was_up = stack.is_up()
    stack.up()
    try:
        result = run_campaign(
            stack,
            CampaignConfig(
                seed=seed,
                minutes=args.minutes,
                out=args.out,
                rate=args.rate,
                fault_scale=args.fault_scale,
                drain_seconds=args.drain_seconds,
                failover_bound_seconds=args.failover_bound,
                unreachable_policy=args.unreachable_policy,
                proxy_faults=not args.no_proxy_faults,
            ),
            say=lambda line: print(line, flush=True),
        )
    finally:
        if not was_up and os.environ.get("KD_STACK_KEEP") != "1":
            stack.down()
    print(result.report.table(), flush=True)
    print(f"fault campaign seed: {seed}; history: {result.folder}", flush=True)
    return 0 if result.report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
