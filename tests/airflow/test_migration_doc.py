"""``docs/airflow-migration.md`` follows ``parameters``: a section for every refused
parameter, and every parameter of every group named, so a parameter moved between groups
or added to one shows up here until the guide says what became of it."""

from __future__ import annotations

import re

from dispatcher.airflow import check, parameters
from tests.airflow.conftest import REPO

GUIDE = (REPO / "docs" / "airflow-migration.md").read_text()


def sections() -> dict[str, str]:
    """Level-3 sections by their title, with their text."""
    parts = re.split(r"^### (.+)$", GUIDE, flags=re.MULTILINE)
    return {title.strip(): text for title, text in zip(parts[1::2], parts[2::2], strict=True)}


def test_every_refused_parameter_has_a_section_of_its_own() -> None:
    titles = sections()
    missing = [name for name in parameters.REFUSED if f"`{name}`" not in titles]
    assert missing == []
    for name in parameters.REFUSED:
        assert len(titles[f"`{name}`"].split()) >= 5, f"the section on {name} says nothing"


def test_every_parameter_of_every_group_is_named_in_the_guide() -> None:
    for group in check.GROUP_LABELS:
        names = set(getattr(parameters, group))
        unnamed = sorted(n for n in names if f"`{n}`" not in GUIDE)
        assert unnamed == [], f"{group}: not in docs/airflow-migration.md"


def test_the_guide_shows_the_decorators_and_the_check() -> None:
    assert "@task.dispatcher(" in GUIDE
    assert "@task.dispatcher_cmd(" in GUIDE
    assert "dispatcher airflow check" in GUIDE
