"""When the node's periodic output jobs (mesh, occupancy, diagnostics, ...) are due.

The output thread keeps this schedule itself instead of one rclpy timer per job: a timer is one
more entity that the Python executor walks on every wait, and on a 2-core machine the executor's
own bookkeeping competes for the GIL with the integration worker (measured: see docs/DESIGN.md
"The node"). Times are `time.monotonic()` seconds (wall clock, so outputs go on while a bag
pauses sim time).
"""
from __future__ import annotations


class JobSchedule:
    """Fixed-rate jobs. A job first comes due one period after it is (re)started; a job that falls
    behind runs once, not once per missed period. A rate of 0 switches the job off."""

    def __init__(self, rates_hz: dict[str, float], now: float):
        self._next: dict[str, float] = {}
        self._period: dict[str, float] = {}
        self.set_rates(rates_hz, now)

    def set_rates(self, rates_hz: dict[str, float], now: float) -> None:
        """Apply new rates: a changed period takes effect from `now`; unchanged ones keep their
        phase; rate <= 0 stops a job."""
        for name, rate in rates_hz.items():
            if not rate > 0:
                self._period.pop(name, None)
                self._next.pop(name, None)
                continue
            period = 1.0 / float(rate)
            if self._period.get(name) != period:
                self._period[name] = period
                self._next[name] = now + period

    def period_s(self, name: str) -> float | None:
        """The job's period in seconds; None when it is off."""
        return self._period.get(name)

    def take_due(self, now: float) -> set[str]:
        """The jobs due at `now`; each is rescheduled one period later (or one period after `now`
        when it fell more than a period behind)."""
        due = set()
        for name, t in self._next.items():
            if now >= t:
                due.add(name)
                nxt = t + self._period[name]
                self._next[name] = nxt if nxt > now else now + self._period[name]
        return due

    def seconds_to_next(self, now: float) -> float | None:
        """Seconds until the next job is due (0 if one is due already); None when all are off."""
        if not self._next:
            return None
        return max(0.0, min(self._next.values()) - now)
