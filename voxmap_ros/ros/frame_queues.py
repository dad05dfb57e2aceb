"""The node's frame queues and its timeline rules, without rclpy (so they are tested directly).

Each sensor kind has a bounded queue of decoded frames in stamp order. A frame older than the
newest one is dropped as out of order, except when time really went back (a bag played again, a
clock reset): one stamp far behind the newest is a stray stamp, but two in a row (within the
window of each other) restart the stream. `StampJumps` holds that rule for any stream, so the
node applies it to its pose topics too. `ColorBuffer` holds colour images for the queued depth
frames.
"""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass


class StampJumps:
    """Per stream, tells a stray stamp from time going back. Thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._candidate: dict[str, int] = {}       # stream -> a stamp far behind its newest (unconfirmed)

    def confirms(self, stream: str, stamp_ns: int, window_ns: int) -> bool:
        """For a stamp far (more than window_ns) behind its stream's newest: True when the stream's
        previous stamp was far behind too and within window_ns of this one (time went back); False
        for the first one (a stray stamp: ignore it; it is remembered)."""
        with self._lock:
            prev = self._candidate.get(stream)
            if prev is not None and abs(stamp_ns - prev) <= window_ns:
                del self._candidate[stream]
                return True
            self._candidate[stream] = stamp_ns
            return False

    def forget(self, stream: str | None = None) -> None:
        """A stamp in order arrived on `stream` (None: on every stream, e.g. after a restart)."""
        with self._lock:
            if stream is None:
                self._candidate.clear()
            else:
                self._candidate.pop(stream, None)


@dataclass
class Pushed:
    """What `FrameQueues.push` did with a frame."""
    accepted: bool            # False: out of order (a stray stamp behind the newest), dropped
    newest_ns: int            # the newest stamp of its kind before this frame (-1: none)
    overflow: int = 0         # oldest frames pushed out because the queue was full
    restarted: int | None = None   # time went back: this many queued frames were dropped (None: no jump)


class FrameQueues:
    """Bounded per-kind queues of items with `.kind` and `.stamp_ns` (the node's `Pending`), plus
    the count of frames taken off for integration and not yet done. Thread-safe."""

    def __init__(self, kinds: tuple[str, ...], jumps: StampJumps | None = None):
        self.kinds = tuple(kinds)
        self.jumps = jumps or StampJumps()
        self._lock = threading.Lock()
        self._queues = {k: collections.deque() for k in self.kinds}
        self._in_flight = 0
        self._reset_stamps()

    def _reset_stamps(self) -> None:
        self._newest = {k: -1 for k in self.kinds}      # newest stamp queued or taken, per kind
        self._last_taken = {k: -1 for k in self.kinds}  # stamp of the last frame taken for integration

    def push(self, item, queue_size: int, window_ns: int) -> Pushed:
        """Queue `item` if it is newer than its kind's newest stamp, or if it is the second in a
        row more than window_ns behind (time went back: the queue restarts from it). Keeps at most
        queue_size items, dropping the oldest."""
        with self._lock:
            kind = item.kind
            newest = self._newest[kind]
            q = self._queues[kind]
            out = Pushed(accepted=item.stamp_ns > newest, newest_ns=newest)
            if out.accepted:
                self.jumps.forget(kind)
            elif newest - item.stamp_ns > window_ns and self.jumps.confirms(kind, item.stamp_ns, window_ns):
                out.accepted, out.restarted = True, len(q)
                q.clear()
                self._last_taken[kind] = -1          # the old timeline's frames no longer order this one
            if out.accepted:
                self._newest[kind] = item.stamp_ns
                q.append(item)
                while len(q) > queue_size:
                    q.popleft()
                    out.overflow += 1
            return out

    def heads(self) -> list:
        """The oldest queued item of each kind, in stamp order."""
        with self._lock:
            heads = [q[0] for q in self._queues.values() if q]
        return sorted(heads, key=lambda x: x.stamp_ns)

    def take(self, item) -> bool:
        """Take `item` off the head of its queue for integration (call `done` after). False: it was
        pushed out of the queue meanwhile."""
        with self._lock:
            if not self._is_head(item):
                return False
            self._queues[item.kind].popleft()
            self._in_flight += 1
            self._last_taken[item.kind] = item.stamp_ns
            return True

    def drop(self, item) -> bool:
        """Drop `item` from the head of its queue. A dropped frame no longer counts as the newest
        stamp, so one bad stamp (far ahead) cannot make every later frame look out of order.
        False: it was pushed out meanwhile (already counted as overflow)."""
        with self._lock:
            if not self._is_head(item):
                return False
            q = self._queues[item.kind]
            q.popleft()
            self._newest[item.kind] = max(self._last_taken[item.kind], q[-1].stamp_ns if q else -1)
            return True

    def _is_head(self, item) -> bool:
        q = self._queues[item.kind]
        return bool(q) and q[0] is item

    def done(self) -> None:
        """A frame handed out by `take` is integrated (or failed)."""
        with self._lock:
            self._in_flight -= 1

    def pending(self) -> int:
        """Frames queued or taken and not done (0 = the worker is idle)."""
        with self._lock:
            return sum(len(q) for q in self._queues.values()) + self._in_flight

    def oldest_stamp(self, kind: str) -> int | None:
        """Stamp of the oldest queued frame of `kind`, None when none is queued."""
        with self._lock:
            q = self._queues[kind]
            return q[0].stamp_ns if q else None

    def depths(self) -> dict[str, int]:
        """Queued frames per kind."""
        with self._lock:
            return {k: len(q) for k, q in self._queues.items()}

    def restart(self) -> dict[str, int]:
        """Forget the timeline (the clock went back): empty every queue and reset the stamps.
        Returns the frames dropped per kind."""
        with self._lock:
            dropped = {k: len(q) for k, q in self._queues.items()}
            for q in self._queues.values():
                q.clear()
            self._reset_stamps()
        self.jumps.forget()
        return dropped


class ColorBuffer:
    """Recent colour images, kept until no queued depth frame can pair with them. Thread-safe.

    Depth frames are paired with their colour image only when they are integrated, so while depth
    frames wait (a busy worker, a pose that lags) every colour image from the oldest queued one on
    must stay; a fixed count would drop them and fuse the backlog without colour.
    """

    def __init__(self, keep_recent: int = 30):
        self.keep_recent = int(keep_recent)        # kept with nothing queued: depth may lag colour
        self._lock = threading.Lock()
        self._items: collections.deque = collections.deque()

    def add(self, stamp_ns: int, rgb, oldest_queued_ns: int | None, tolerance_ns: int, max_items: int) -> None:
        """Keep `rgb`; forget images that no depth frame from `oldest_queued_ns` on (None: nothing
        queued) can pair with, and any beyond `max_items` (at least keep_recent), oldest first."""
        cap = max(self.keep_recent, int(max_items))
        with self._lock:
            q = self._items
            q.append((int(stamp_ns), rgb))
            while len(q) > self.keep_recent and (
                    len(q) > cap or oldest_queued_ns is None or q[0][0] < oldest_queued_ns - tolerance_ns):
                q.popleft()

    def nearest(self, stamp_ns: int, tolerance_ns: int):
        """(the image nearest to stamp_ns within tolerance_ns or None, the newest stamp held or -1)."""
        with self._lock:
            items = list(self._items)
        best = None
        for s, rgb in items:
            d = abs(s - stamp_ns)
            if d <= tolerance_ns and (best is None or d < best[0]):
                best = (d, rgb)
        return (best[1] if best else None), (items[-1][0] if items else -1)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
