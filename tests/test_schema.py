"""The label-conflict contract (lungxray.core.schema) that dedupe writes, validate checks and split follows."""

from __future__ import annotations

import pytest

from lungxray.core.schema import conflict_outcome, kept_per_group


def test_a_group_without_conflict_keeps_its_label_under_every_policy():
    for policy in ("drop", "majority", "fail"):
        assert conflict_outcome(["normal", "normal", ""], policy) == ("", "normal")
        assert conflict_outcome(["", ""], policy) == ("", "")  # unlabelled folders: no conflict


def test_drop_leaves_the_label_unknown_and_keeps_nobody():
    action, resolved = conflict_outcome(["normal", "pneumonia", "pneumonia"], "drop")
    assert (action, resolved) == ("drop", "") and kept_per_group(action) == 0


def test_majority_resolves_to_the_most_frequent_label_and_keeps_one():
    action, resolved = conflict_outcome(["pneumonia", "normal", "pneumonia", ""], "majority")
    assert (action, resolved) == ("majority", "pneumonia") and kept_per_group(action) == 1


def test_a_majority_tie_is_dropped_like_drop():
    action, resolved = conflict_outcome(["normal", "pneumonia", "covid19", "covid19", "normal"], "majority")
    assert (action, resolved) == ("drop_tie", "") and kept_per_group(action) == 0


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="majority"):
        conflict_outcome(["a", "b"], "vote")
