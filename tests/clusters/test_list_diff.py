"""Relisting turns the difference between two lists into events; pure."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dispatcher.clusters import diff_lists, object_key


def obj(name: str, rv: str, uid: str | None = None, namespace: str = "ns") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid or f"uid-{name}",
            "resourceVersion": rv,
        }
    }


def keyed(*objects: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {object_key(o): o for o in objects}


def test_object_keys_are_namespace_slash_name_or_just_the_name() -> None:
    assert object_key(obj("a", "1")) == "ns/a"
    assert object_key({"metadata": {"name": "node-1"}}) == "node-1"


def test_relist_reports_additions_changes_and_deletions() -> None:
    old = keyed(obj("kept", "1"), obj("changed", "2"), obj("gone", "3"))
    new = keyed(obj("kept", "1"), obj("changed", "5"), obj("new", "6"))
    events = diff_lists(old, new)
    assert [(kind, object_key(o)) for kind, o, _ in events] == [
        ("DELETED", "ns/gone"),
        ("MODIFIED", "ns/changed"),
        ("ADDED", "ns/new"),
    ]
    modified = events[1]
    assert modified[2] is old["ns/changed"]  # the previous state comes along


def test_an_object_recreated_under_the_same_name_is_deleted_then_added() -> None:
    old = keyed(obj("p", "1", uid="first"))
    new = keyed(obj("p", "9", uid="second"))
    assert [(kind, o["metadata"]["uid"]) for kind, o, _ in diff_lists(old, new)] == [
        ("DELETED", "first"),
        ("ADDED", "second"),
    ]


def test_identical_lists_make_no_events() -> None:
    same = keyed(obj("a", "1"), obj("b", "2"))
    assert diff_lists(same, dict(same)) == []


versions = st.dictionaries(
    st.sampled_from("abcdefgh"),
    st.tuples(st.sampled_from(["u1", "u2"]), st.integers(1, 5)),
    max_size=8,
)


@given(before=versions, after=versions)
def test_applying_the_events_to_the_old_list_gives_the_new_one(
    before: dict[str, tuple[str, int]], after: dict[str, tuple[str, int]]
) -> None:
    old = keyed(*(obj(n, str(rv), uid) for n, (uid, rv) in before.items()))
    new = keyed(*(obj(n, str(rv), uid) for n, (uid, rv) in after.items()))
    state = dict(old)
    for kind, o, _ in diff_lists(old, new):
        if kind == "DELETED":
            del state[object_key(o)]
        else:
            state[object_key(o)] = o
    assert state == new
