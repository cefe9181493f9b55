"""The suite's own file order (tests/scheduling.py): heaviest files first, whole files kept
together in their order, from measured seconds or, unmeasured, from the slow marks."""

from __future__ import annotations

import json

import pytest

from . import scheduling


class _Item:
    """What heaviest_files_first reads of a pytest item: its id and its slow mark."""

    def __init__(self, nodeid: str, slow: bool = False) -> None:
        self.nodeid, self.slow = nodeid, slow

    def get_closest_marker(self, name: str):
        return object() if name == "slow" and self.slow else None


@pytest.fixture
def measured(tmp_path, monkeypatch):
    def write(seconds: dict[str, float]) -> None:
        path = tmp_path / "test-seconds.json"
        path.write_text(json.dumps(seconds))
        monkeypatch.setenv(scheduling.SNAPSHOT_ENV, str(path))

    return write


def _order(items) -> list[str]:
    scheduling.heaviest_files_first(items)
    return [it.nodeid for it in items]


def test_measured_seconds_put_the_heaviest_file_first_and_keep_files_whole(measured):
    measured({"a.py::one": 1.0, "a.py::two": 1.0, "b.py::big": 30.0, "c.py::x": 5.0})
    items = [_Item("a.py::one"), _Item("a.py::two"), _Item("b.py::big"), _Item("c.py::x"),
             _Item("c.py::y")]  # fmt: skip
    # b: 30 s; c: 5 s + 1 s (unmeasured); a: 2 s
    assert _order(items) == ["b.py::big", "c.py::x", "c.py::y", "a.py::one", "a.py::two"]


def test_unmeasured_slow_tests_weigh_more_and_ties_keep_the_collection_order(measured):
    measured({})
    items = [_Item("a.py::one"), _Item("a.py::two"), _Item("b.py::s", slow=True), _Item("c.py::z"),
             _Item("d.py::w"), _Item("d.py::v")]  # fmt: skip
    assert _order(items) == ["b.py::s", "a.py::one", "a.py::two", "d.py::w", "d.py::v", "c.py::z"]


def test_an_unreadable_snapshot_orders_as_if_nothing_was_measured(tmp_path, monkeypatch):
    (tmp_path / "bad.json").write_text("{not json")
    monkeypatch.setenv(scheduling.SNAPSHOT_ENV, str(tmp_path / "bad.json"))
    items = [_Item("a.py::one"), _Item("b.py::s", slow=True)]
    assert _order(items) == ["b.py::s", "a.py::one"]
