"""The output thread's job schedule (voxmap_ros.ros.schedule): no ROS needed."""
import pytest

from voxmap_ros.ros.schedule import JobSchedule


def test_first_run_one_period_after_start_then_every_period():
    s = JobSchedule({"mesh": 2.0, "diag": 1.0}, now=0.0)
    assert s.take_due(0.49) == set()
    assert s.seconds_to_next(0.49) == pytest.approx(0.01)
    assert s.take_due(0.5) == {"mesh"}
    assert s.take_due(1.0) == {"mesh", "diag"}
    assert s.take_due(1.2) == set()
    assert s.seconds_to_next(1.2) == pytest.approx(0.3)


def test_a_job_that_fell_behind_runs_once():
    s = JobSchedule({"mesh": 10.0}, now=0.0)
    assert s.take_due(5.0) == {"mesh"}            # 50 periods late: once
    assert s.take_due(5.05) == set()              # next one period after the late run
    assert s.take_due(5.1) == {"mesh"}


def test_rate_zero_stops_and_restart_begins_a_new_period():
    s = JobSchedule({"render": 0.0, "mesh": 1.0}, now=0.0)
    assert s.period_s("render") is None and s.period_s("mesh") == 1.0
    s.set_rates({"render": 4.0, "mesh": 1.0}, now=10.3)      # mesh keeps its phase
    assert s.period_s("render") == 0.25
    assert s.take_due(10.5) == {"mesh"}           # due since 1.0, late: runs
    assert s.take_due(10.55) == {"render"}        # 10.3 + 0.25
    s.set_rates({"render": 0.0, "mesh": 0.0}, now=11.0)
    assert s.take_due(100.0) == set() and s.seconds_to_next(100.0) is None


def test_changed_rate_takes_effect_from_now():
    s = JobSchedule({"mesh": 0.1}, now=0.0)       # next due at 10 s
    s.set_rates({"mesh": 5.0}, now=1.0)
    assert s.period_s("mesh") == 0.2
    assert s.take_due(1.2) == {"mesh"}
