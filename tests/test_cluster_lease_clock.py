"""The lease rule alone: the deadline follows the send time of the last keepalive."""

from __future__ import annotations

import pytest

from stemedb.cluster import LeaseClock, retry_margin_seconds


def test_deadline_is_send_time_plus_ttl_minus_margin() -> None:
    clock = LeaseClock(10, margin_seconds=2.5)
    assert clock.deadline_mono is None and not clock.valid(0.0)
    clock.renewed(100.0)
    assert clock.deadline_mono == 107.5 and clock.earliest_expiry_mono == 110.0
    assert clock.valid(107.49) and not clock.valid(107.5)


def test_an_older_keepalive_answering_late_never_moves_the_deadline_back_or_on() -> None:
    clock = LeaseClock(10, margin_seconds=2.5)
    clock.renewed(100.0)
    clock.renewed(95.0)  # sent earlier, answered later
    assert clock.deadline_mono == 107.5
    clock.renewed(103.0)
    assert clock.deadline_mono == 110.5
    clock.forget()
    assert clock.deadline_mono is None and not clock.valid(0.0)


@pytest.mark.parametrize("ttl, margin", [(2, 0.5), (10, 2.5), (1, 0.25), (60, 15.0)])
def test_default_margin(ttl: int, margin: float) -> None:
    assert retry_margin_seconds(ttl) == margin
    assert LeaseClock(ttl).margin_seconds == margin


@pytest.mark.parametrize("margin", [-0.1, 10.0, 11.0])
def test_margin_must_leave_a_window(margin: float) -> None:
    with pytest.raises(ValueError):
        LeaseClock(10, margin_seconds=margin)
