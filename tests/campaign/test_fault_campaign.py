"""A CI-sized fault campaign on the session stack: two leader-elected replicas, a seeded
stream of tasks, a seeded fault schedule, an admin watch's history, and the checker's verdict.

Two runs: a fixed seed, and a random one (printed, in the test id and in the output) so CI
keeps exploring. A failing random seed becomes a fixed regression case in
``REGRESSION_SEEDS``, with the violation it showed. Histories stay in the stack's folder
(``<KD_STACK_DIR>/campaigns/<namespace>``) for the checker to judge again.
"""

from __future__ import annotations

import random

import pytest

from benchmarks.fault_campaign.campaign import CampaignConfig, run_campaign
from tests.stack import Stack

FIXED_SEED = 20261202
RANDOM_SEED = random.SystemRandom().randrange(1, 2**31)
#: Seeds that once made the checker fail: (seed, the violation it named).
#: Not listed because it is ``FIXED_SEED`` itself: 20261202 failed the 15-minute benchmark
#: run at 3b12c92 (``final_state_missing`` and ``pod_left_behind``: a replica re-attaching
#: after taking the Lease answered a cancel with 404), at minute 14, which this 1-minute
#: run never reaches; ``tests/simulation/test_races.py`` replays it
#: (``test_a_new_leader_still_reattaching_says_retry_never_no_such_job``).
#: Open (not listed until fixed, or CI would fail on it every run): 406888241 at 0.75 min
#: gave ``final_state_missing`` for two gpu-a100 jobs created just after its apiserver came
#: back; the admin watch saw their pods Running and never finishing (KWOK restarted with
#: the apiserver), and the dispatcher still said ``pending`` after its 410 relist.
REGRESSION_SEEDS: list[tuple[int, str]] = []

SEEDS = [
    pytest.param(FIXED_SEED, id=f"fixed-seed-{FIXED_SEED}"),
    pytest.param(RANDOM_SEED, id=f"random-seed-{RANDOM_SEED}"),
    *(pytest.param(seed, id=f"regression-{seed}-{name}") for seed, name in REGRESSION_SEEDS),
]


@pytest.mark.slow
@pytest.mark.stack
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", SEEDS)
def test_a_short_fault_campaign_leaves_a_history_the_checker_passes(
    stack: Stack, seed: int
) -> None:
    print(f"fault campaign seed: {seed}")  # noqa: T201 - CI's output names the seed
    result = run_campaign(
        stack,
        CampaignConfig(
            seed=seed,
            minutes=0.75,
            fault_scale=0.5,
            drain_seconds=120,
            # Finished pods go soon, so the wait for their cleanup is short (CI time).
            finished_pod_linger_seconds=5.0,
        ),
    )
    table = result.report.table()
    print(table)  # noqa: T201 - and shows the figures of a passing run
    assert result.report.ok, f"seed {seed}, history {result.folder}:\n{table}"
