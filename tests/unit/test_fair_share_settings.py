"""The ``fair_share`` settings: checked at start like every section, and re-read from the
settings file without a restart (``SettingsReloader``), a bad change refused whole."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from dispatcher import metrics
from dispatcher.api.service import SettingsReloader
from dispatcher.core.fairshare import FairShareSettings
from dispatcher.errors import ConfigError
from dispatcher.settings import load_settings

PLANE = {"name": "plane", "role": "in-plane", "credentials": {"in_cluster": True}}


def _write(path: Path, fair_share: Any, stamp: int) -> Path:
    path.write_text(yaml.safe_dump({"clusters": [PLANE], "fair_share": fair_share}))
    os.utime(path, ns=(stamp, stamp))  # distinct stamps, whatever the file system's clock
    return path


def _problems(tmp_path: Path, fair_share: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(_write(tmp_path / "d.yaml", fair_share, 1))
    return [str(p) for p in caught.value.problems]


def test_every_fair_share_problem_is_listed_at_its_field(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        {
            "tenants": {
                "team-a": {"weight": 0, "quota": {"gpus": {"a100": -1}, "cpu": "lots"}},
                "team-b": {"clusters": {"nowhere": {"gpus": {"a100": 1}}}},
            },
            "max_reservations": -1,
        },
    )
    text = "\n".join(problems)
    assert "fair_share.tenants[team-a].weight: input should be greater than 0" in text
    assert "fair_share.tenants[team-a].quota.gpus: a100: must not be negative" in text
    assert "fair_share.tenants[team-a].quota.cpu" in text
    assert "fair_share.max_reservations" in text
    assert "fair_share.tenants.team-b.clusters.nowhere: 'nowhere' is not one of the" in text


def test_a_changed_fair_share_section_applies_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.yaml", {"tenants": {"team-a": {"weight": 1}}}, 10**18)
    applied: list[FairShareSettings] = []
    reloader = SettingsReloader(path, applied.append)
    assert not reloader.check()  # unchanged since the service read it
    _write(path, {"tenants": {"team-a": {"weight": 3}}}, 10**18 + 1)
    assert reloader.check()
    assert applied[-1].share("team-a").weight == 3
    invalid = metrics.SETTINGS_RELOADS.labels(outcome="invalid")
    before = invalid._value.get()
    _write(path, {"tenants": {"team-a": {"weight": -3}}}, 10**18 + 2)
    assert not reloader.check()
    assert len(applied) == 1  # the settings in force stay
    assert invalid._value.get() == before + 1
    assert not reloader.check()  # the same bad file is not tried again
    _write(path, {"tenants": {"team-a": {"weight": 5}}}, 10**18 + 3)
    assert reloader.check()
    assert applied[-1].share("team-a").weight == 5
