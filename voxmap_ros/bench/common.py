"""Helpers shared by the benchmarks: machine description, timing statistics, JSON output, tables."""
from __future__ import annotations

import gc
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from ..jsonio import dumps


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def code_fingerprint() -> dict:
    """Which code was measured: git HEAD (if any), whether the tree has changes, and a SHA-256 over
    voxmap_ros/core/*.py and kernels/**/*.cpp|*.h (the files that decide the timings)."""
    import hashlib
    import subprocess
    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    files = sorted((root / "voxmap_ros" / "core").glob("*.py"))
    files += sorted(p for ext in ("*.cpp", "*.h", "*.hpp") for p in (root / "kernels").rglob(ext))
    for f in files:
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    out = {"core_sha256": h.hexdigest()[:16], "files": len(files)}
    try:
        out["git_head"] = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                         text=True, timeout=10).stdout.strip() or None
        st = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True,
                            timeout=10).stdout
        out["git_dirty"] = bool(st.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


# Environment variables that change how the kernels' threads are placed (README, "ROS 2 node").
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_PROC_BIND", "OMP_PLACES", "VOXMAP_SPREAD_THREADS")


def machine_info() -> dict:
    """CPU model, logical cores (usable by this process), torch threads, library versions."""
    import torch
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {"cpu_model": cpu_model(), "cores": os.cpu_count(), "cores_usable": usable,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average_1_5_15": load_average(),
            "thread_env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ}}
    try:
        import open3d
        info["open3d"] = open3d.__version__
    except ImportError:
        pass
    try:
        from importlib.metadata import version
        info["octomap_python"] = version("octomap-python")
    except Exception:          # noqa: BLE001 - optional peer
        pass
    return info


def load_average():
    """(1, 5, 15)-minute load averages, or None where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


class System:
    """One mapping system under test. `prepare` turns in-memory frames into its own inputs
    (untimed); `make` builds an empty map; `integrate` (timed) fuses one prepared input and may
    return its own measured milliseconds (a system that runs elsewhere, e.g. in its own process);
    `finish` returns (result dict, mesh or None) from the final map; `local` gives the final map
    as an object of this process (itself, unless the system runs elsewhere)."""
    name = "system"

    def prepare(self, frames) -> list:
        return list(frames)

    def make(self):
        raise NotImplementedError

    def integrate(self, state, item) -> None:
        raise NotImplementedError

    def finish(self, state, want_mesh: bool):
        return {}, None

    def local(self, state):
        return state

    def save_state(self, state, path) -> None:
        raise NotImplementedError(f"{self.name} cannot write its map to a file")

    def load_state(self, path):
        raise NotImplementedError(f"{self.name} cannot read its map from a file")


def run_systems(systems: list, frames, warmup: int, interleave: bool = True, progress=None, repeat: int = 1):
    """Time every system on the same frames. Warm-up: the first `warmup` frames go through a
    throw-away map of each system. Timed run: each system starts from an empty map; with
    `interleave` the systems take turns frame by frame (so a machine whose load changes during
    the run slows all of them alike), else each runs all frames in turn. With `repeat` > 1 the
    timed run is done that many times (fresh maps each time) and each frame keeps its fastest
    time (the usual defence against other processes on a shared machine).
    Returns (states {name: final map of the last repeat}, ms {name: [per-frame milliseconds]},
    repeats {name: {"medians": [median ms of each repeat], "p95s": [p95 ms of each repeat]}}):
    the best-of times make a steady median; a tail latency is read from the p95s of the repeats."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    items = {s.name: s.prepare(frames) for s in systems}
    for s in systems:
        if warmup:
            w = s.make()
            for it in items[s.name][:warmup]:
                s.integrate(w, it)
            del w
    n = len(frames)
    best = {s.name: [math.inf] * n for s in systems}
    medians = {s.name: {"medians": [], "p95s": []} for s in systems}
    states = {}
    for _ in range(repeat):
        states.clear()
        gc.collect()
        states.update({s.name: s.make() for s in systems})
        ms = {s.name: [] for s in systems}

        def step(s, i):
            t0 = time.perf_counter()
            own_ms = s.integrate(states[s.name], items[s.name][i])
            wall_ms = (time.perf_counter() - t0) * 1000.0
            ms[s.name].append(float(own_ms) if isinstance(own_ms, (int, float)) else wall_ms)

        if interleave:
            for i in range(n):
                for s in systems:
                    step(s, i)
                if progress:
                    progress(i, n, ms)
        else:
            for s in systems:
                for i in range(n):
                    step(s, i)
                    if progress:
                        progress(i, n, {s.name: ms[s.name]})
        for s in systems:
            best[s.name] = [min(a, b) for a, b in zip(best[s.name], ms[s.name])]
            medians[s.name]["medians"].append(float(np.median(ms[s.name])) if n else None)
            medians[s.name]["p95s"].append(float(np.percentile(ms[s.name], 95)) if n else None)
    return dict(states), best, medians


def progress_printer(unit: str, quiet: bool = False):
    """A `progress(i, n, ms)` callback printing medians to stderr about ten times per run."""
    def progress(i, n, ms):
        if quiet or not (i + 1 == n or (i + 1) % max(1, n // 10) == 0):
            return
        parts = "  ".join(f"{k} {np.median(v):.2f}" for k, v in ms.items() if v)
        print(f"  {i + 1:5d}/{n}  median ms/{unit}: {parts}", file=sys.stderr, flush=True)
    return progress


FLAT_WINDOW = 50          # items at each end of a sequence for the flat-cost check


def timing_stats(ms, prefix: str = "ms_per_frame") -> dict:
    """{prefix_median, prefix_p95, prefix_mean, prefix_min, prefix_max} (milliseconds) of a
    sequence of per-item times in ms, plus total_s and n, and the flat-cost check: medians of
    the first and last FLAT_WINDOW items and last/first (None with fewer than 2 windows of
    items). Empty input gives None values."""
    a = np.asarray(list(ms), dtype=np.float64)
    if a.size == 0:
        return {f"{prefix}_median": None, f"{prefix}_p95": None, f"{prefix}_mean": None,
                f"{prefix}_min": None, f"{prefix}_max": None, "total_s": 0.0, "n": 0,
                "first50_median": None, "last50_median": None, "last50_over_first50": None}
    flat = a.size >= 2 * FLAT_WINDOW
    first = float(np.median(a[:FLAT_WINDOW])) if flat else None
    last = float(np.median(a[-FLAT_WINDOW:])) if flat else None
    return {f"{prefix}_median": float(np.median(a)), f"{prefix}_p95": float(np.percentile(a, 95)),
            f"{prefix}_mean": float(a.mean()), f"{prefix}_min": float(a.min()), f"{prefix}_max": float(a.max()),
            "total_s": float(a.sum() / 1000.0), "n": int(a.size),
            "first50_median": first, "last50_median": last, "last50_over_first50": ratio(last, first)}


def ratio(a, b):
    """a / b, or None when either is missing or b is not positive."""
    if a is None or b is None or not b > 0:
        return None
    return float(a) / float(b)


class Timer:
    """`with Timer() as t: ...; t.ms` -- wall-clock milliseconds (perf_counter)."""

    def __enter__(self):
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.ms = (time.perf_counter() - self._t0) * 1000.0
        return False


def run_and_report(run, print_report, args) -> int:
    """The `main` of every benchmark: run(args) -> payload, print it, write --json if given."""
    payload = run(args)
    print_report(payload)
    if args.json:
        path = write_json(args.json, payload)
        print(f"wrote {path}")
    return 0


def flush_deferred_ms(mapper) -> float:
    """Run the octree-summary refresh that Mapper.integrate defers to the next query, and return
    its milliseconds: benchmarks time integrate() and report this cost next to it."""
    with Timer() as t:
        mapper.octree.flush_summaries()
    return t.ms


def command_line() -> str:
    """The exact command line this process was started with (interpreter and flags included,
    from sys.orig_argv on Python >= 3.10), shell-quoted."""
    argv = list(getattr(sys, "orig_argv", None) or sys.argv)
    return " ".join(shlex.quote(a) for a in argv)


def equivalent_command(args, bench: str) -> str:
    """`voxmap bench <bench> --opt value ...` rebuilt from the parsed options (every option, the
    defaults included), so a run can be repeated even when it was started from Python."""
    parts = ["voxmap", "bench", bench]
    for k, v in sorted(vars(args).items()):
        if k in ("func", "cmd", "bench", "verbose") or v is None or v is False:
            continue
        flag = "--" + k.replace("_", "-")
        parts += [flag] if v is True else [flag, str(v)]
    return " ".join(shlex.quote(p) for p in parts)


def write_json(path, payload: dict) -> Path:
    """Write `payload` (made JSON-safe; non-finite numbers become null) to `path`, creating the
    folder. Adds "command" (the exact command line) and "written_utc" unless already present."""
    out = {"command": payload.get("command") or command_line()}
    out.update({k: v for k, v in payload.items() if k != "command"})
    out.setdefault("written_utc", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(dumps(out, indent=2) + "\n")
    return p


def fmt(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def print_table(rows: list[dict], columns: list[tuple[str, str]], title: str = "", file=None) -> None:
    """Print rows (dicts) as an aligned text table; columns are (key, header) pairs."""
    file = file or sys.stdout
    cells = [[h for _, h in columns]] + [[fmt(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    if title:
        print(title, file=file)
    for j, row in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))), file=file)
        if j == 0:
            print("  ".join("-" * w for w in widths), file=file)
