"""A benchmark peer run in a process of its own, driven frame by frame from the benchmark.

Why: two mappers in one process share one C heap, and a peer that frees a great many small
blocks can slow down the other one's allocations. Measured on the Intel VM, 2026-12-01: right
after OctoMap's `insertPointCloud` (hundreds of thousands of tree and key-set nodes allocated and
freed per scan), every `malloc` of 1 KiB or more in the same process took ~2 ms
(`bytearray(2048)`: 1.9 ms, against microseconds before), so in the interleaved schedule voxmap's
input checks alone went from 0.8 to 10.5 ms per scan. On a robot each mapper is its own node,
i.e. its own process; here the peer is too. The machine's caches and cores stay shared, which is
what the interleaved schedule is meant to show.

The peer measures its own `integrate` time in its process (the pipe round trip is not charged to
it), and `local(state)` brings its final map into this process through the peer's own file format
for the comparisons that follow the timed run.
"""
from __future__ import annotations

import multiprocessing as mp
import tempfile
import time
import traceback
from pathlib import Path

from . import common

START_METHOD = "spawn"        # no fork of a process that already runs torch / OpenMP threads
REPLY_TIMEOUT_S = 3600.0      # one peer call (a scan, or writing the final map) never takes this long
STOP_TIMEOUT_S = 10.0         # close(): a peer that does not exit within this is killed


class PeerProcessError(RuntimeError):
    """The peer's process failed; the message carries its traceback."""


def _serve(conn, inner: common.System) -> None:
    """The peer process: holds the prepared inputs and one current map, answers (op, arg)."""
    items, state = [], None
    while True:
        op, arg = conn.recv()
        try:
            if op == "stop":
                conn.send(("ok", None))
                return
            if op == "items":
                items = arg
                reply = len(items)
            elif op == "make":
                state = None                       # free the previous map before building the next
                state = inner.make()
                reply = None
            elif op == "integrate":
                t0 = time.perf_counter()
                inner.integrate(state, items[arg])
                reply = (time.perf_counter() - t0) * 1000.0
            elif op == "finish":
                reply = inner.finish(state, False)[0]
            elif op == "save":
                inner.save_state(state, arg)
                reply = None
            else:
                raise ValueError(f"unknown request {op!r}")
            conn.send(("ok", reply))
        except Exception:          # noqa: BLE001 - every failure goes back to the benchmark
            conn.send(("error", traceback.format_exc()))


class ProcessSystem(common.System):
    """`inner` (a picklable common.System with save_state / load_state) run in its own process.

    prepare() runs in this process (untimed) and ships the inputs once; make / integrate /
    finish run in the peer process; integrate returns the peer's own milliseconds."""

    def __init__(self, inner: common.System):
        self.inner = inner
        self.name = inner.name
        ctx = mp.get_context(START_METHOD)
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, inner), name=f"bench-peer-{inner.name}", daemon=True)
        self._proc.start()
        child.close()
        self._generation = 0
        self._broken = ""

    def _call(self, op: str, arg=None, timeout_s: float = REPLY_TIMEOUT_S):
        """One request and its reply. A round trip that does not complete (no answer in time, an
        interrupt, a broken pipe) leaves the pipe out of step, so the peer is then killed and
        every later call fails at once instead of reading a stale reply."""
        if self._broken:
            raise PeerProcessError(f"{self.name}'s process was stopped after an earlier failure: {self._broken}")
        if not self._proc.is_alive():
            raise PeerProcessError(f"{self.name}'s process is not running (exit code {self._proc.exitcode})")
        done = False
        try:
            self._conn.send((op, arg))
            if not self._conn.poll(timeout_s):
                raise PeerProcessError(f"{self.name}'s process gave no answer to '{op}' within {timeout_s:.0f} s")
            status, reply = self._conn.recv()
            done = True
        except (EOFError, OSError) as e:
            self._proc.join(1)
            raise PeerProcessError(f"{self.name}'s process died during '{op}' (exit code "
                                   f"{self._proc.exitcode})") from e
        finally:
            if not done:
                self._broken = f"'{op}' did not complete"
                self._kill()
        if status != "ok":
            raise PeerProcessError(f"{self.name} failed in its own process during '{op}':\n{reply}")
        return reply

    def _kill(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join(5)

    def prepare(self, frames) -> list:
        n = self._call("items", self.inner.prepare(frames))
        return list(range(n))

    def make(self):
        self._call("make")
        self._generation += 1
        return self._generation

    def integrate(self, state, item) -> float:
        if state != self._generation:
            raise PeerProcessError(f"{self.name}: only the latest map lives in its process (asked for map "
                                   f"{state}, current {self._generation})")
        return self._call("integrate", item)

    def finish(self, state, want_mesh: bool = False):
        out = self._call("finish")
        out["process"] = "own process"
        return out, None

    def local(self, state):
        """The peer's current map, written by its process and read back here."""
        with tempfile.TemporaryDirectory(prefix="voxmap-bench-peer-") as d:
            path = Path(d) / "state"
            self._call("save", str(path))
            return self.inner.load_state(path)

    def close(self) -> None:
        """Stop the peer: ask it to exit, and kill it if it does not answer within seconds."""
        if self._proc.is_alive() and not self._broken:
            try:
                self._call("stop", timeout_s=STOP_TIMEOUT_S)
            except PeerProcessError:
                pass
            self._proc.join(STOP_TIMEOUT_S)
        self._kill()
        self._conn.close()
