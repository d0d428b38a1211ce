"""A CI-sized fault campaign on the session stack: two leader-elected replicas, a seeded
stream of tasks, a seeded fault schedule, an admin watch's history, and the checker's verdict.

Runs: every seed in ``REGRESSION_SEEDS`` (fixed seeds that once failed), and a random one
(printed, in the test id and in the output) so CI keeps exploring. A failing random seed
becomes a fixed regression case there, with the violation it showed, once it is fixed.
``KD_CAMPAIGN_SEED`` replays one; the session sets it when unset (``tests/conftest.py``),
so every pytest-xdist worker collects the same seed.
Histories stay in the stack's folder (``<KD_STACK_DIR>/campaigns/<namespace>``) for the
checker to judge again.
"""

from __future__ import annotations

import os

import pytest

from benchmarks.fault_campaign.campaign import CampaignConfig, run_campaign
from tests.stack import Stack

RANDOM_SEED = int(os.environ["KD_CAMPAIGN_SEED"])
#: Seeds that once made the checker fail at this size: (seed, the violation it named). They
#: are CI's fixed seeds; each run adds one random seed.
#:
#: 406888241: ``final_state_missing`` for two gpu-a100 jobs. Their pods were created just
#: after that cluster's apiserver came back, while the informers still waited out their
#: backoff, and finished and went before the informers' 410 relist: neither list had them,
#: so no diff reported them and the jobs stayed ``pending``. Fixed by reading every live
#: attempt a list lacks (``PodEvents.sweep`` on the cache's ``listed`` event);
#: ``tests/simulation/test_races.py`` replays it
#: (``test_a_pod_that_came_and_went_unwatched_is_read_when_the_informer_lists_again``).
#:
#: Not listed: 20261202, the 15-minute benchmark's seed, failed at 3b12c92 at minute 14
#: (a replica re-attaching after taking the Lease answered a cancel with 404), which a
#: CI-sized run never reaches; ``test_races.py`` replays it
#: (``test_a_new_leader_still_reattaching_says_retry_never_no_such_job``).
REGRESSION_SEEDS: list[tuple[int, str]] = [(406888241, "final_state_missing")]

SEEDS = [
    *(pytest.param(seed, id=f"regression-{seed}-{name}") for seed, name in REGRESSION_SEEDS),
    pytest.param(RANDOM_SEED, id=f"random-seed-{RANDOM_SEED}"),
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
