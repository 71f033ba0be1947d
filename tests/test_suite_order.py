"""The order conftest hands test groups to the parallel workers: whole groups, the longest first by
tests/durations.json, so that no long group starts last."""

from types import SimpleNamespace

import pytest

from conftest import DURATIONS, _longest_groups_first


def item(nodeid: str, group: str) -> SimpleNamespace:
    marker = pytest.mark.xdist_group(group).mark
    return SimpleNamespace(nodeid=nodeid, get_closest_marker=lambda name: marker if name == "xdist_group" else None)


def test_groups_start_longest_first_whole_and_in_their_own_order():
    items = [item("tests/test_a.py::one", "a"), item("tests/test_b.py::one", "b"), item("tests/test_a.py::two", "a"),
             item("tests/test_c.py::one", "c"), item("tests/test_d.py::one", "c"), item("tests/test_e.py::one", "e")]
    # b 30 s; c = its two modules, 12 + 20 s; a 10 s; e unknown, counted as 5 s.
    _longest_groups_first(items, {"tests/test_a.py": 10.0, "tests/test_b.py": 30.0, "tests/test_c.py": 12.0,
                                  "tests/test_d.py": 20.0})
    assert [i.nodeid for i in items] == ["tests/test_c.py::one", "tests/test_d.py::one", "tests/test_b.py::one",
                                         "tests/test_a.py::one", "tests/test_a.py::two", "tests/test_e.py::one"]


def test_the_durations_file_names_existing_modules_with_seconds():
    import json

    seconds = json.loads(DURATIONS.read_text())
    assert seconds and all(value >= 0 for value in seconds.values())
    missing = [module for module in seconds if not (DURATIONS.parents[1] / module).is_file()]
    assert not missing, f"{missing}: gone from tests/; run `make durations`"
