"""Failpoints: off by default, precise when armed."""

from __future__ import annotations

import pytest

from shared.failpoints import FailpointError, Failpoints


def test_unarmed_failpoints_do_nothing() -> None:
    failpoints = Failpoints("")
    for _ in range(5):
        failpoints.hit("relay.after_publish")


def test_raise_failpoint_fails_exactly_the_first_n_hits() -> None:
    failpoints = Failpoints("consumer.before_effect=raise*2")
    outcomes = []
    for _ in range(4):
        try:
            failpoints.hit("consumer.before_effect")
            outcomes.append("passed")
        except FailpointError:
            outcomes.append("raised")
    assert outcomes == ["raised", "raised", "passed", "passed"]


def test_other_names_are_not_affected() -> None:
    Failpoints("consumer.before_effect=raise*1").hit("relay.after_publish")


@pytest.mark.parametrize("spec", ["relay=explode", "relay=exit@x", "relay"])
def test_malformed_spec_is_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        Failpoints(spec)
