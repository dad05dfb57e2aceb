"""Compiled CPU kernels (kernels/cpu/*.cpp), built on first use and loaded with ctypes.

`integrate_rgbd_cpp` and `integrate_lidar_cpp` are drop-in twins of
`integrate.integrate_rgbd_torch` / `integrate.integrate_lidar_torch`: same arguments, same returned
slots, same voxel sets; values equal up to float32 rounding (see kernels/cpu/fusion.cpp).

Build: the first call of `available()` (or of a kernel) compiles the sources with the C++ compiler
($CXX, default g++) into a cache directory ($VOXMAP_KERNEL_CACHE, default
~/.cache/voxmap_ros/kernels), under a name keyed by a hash of the sources, the flags, the compiler
and the CPU (the build uses -march=native). Concurrent builders write to a temporary file and
rename it into place; a lock file keeps them from doing the work twice. Importing this module never
compiles anything, and a missing compiler or a failed build only makes `available()` False (the
reason is logged and returned by `unavailable_reason()`).

The kernels work on CPU tensors only; the octree must live on the CPU.

API: available(), unavailable_reason(), integrate_rgbd_cpp(), integrate_lidar_cpp(),
brick_summaries_cpp() (the per-brick part of SparseVoxelOctree.update_summaries),
hash_find_cpp() / hash_insert_absent_cpp() and morton_encode_cpp() / morton_decode_cpp() /
morton_ancestors_cpp() (key
bookkeeping, kernels/cpu/keys.cpp),
mesh_bricks_cpp() (marching cubes over bricks, twin of core.marching_cubes via core.mesh),
set_num_threads() (0 = follow torch), last_lidar_stats(), and `profile` (a dict to collect the
wrappers' phase times, for benchmarks). Calls are serialised by a lock: one shared scratch context.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from . import integrate, morton
from .ranges import range_starts

log = logging.getLogger(__name__)

ABI_VERSION = 1
CXX_FLAGS = ("-std=c++17", "-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-fno-trapping-math",
             "-fno-math-errno", "-fPIC", "-shared")
BUILD_TIMEOUT_S = 300.0

_lock = threading.RLock()        # guards loading and the one kernel context (scratch is shared)
_state: dict = {"tried": False, "lib": None, "ctx": None, "reason": "not built yet"}

# Set to a dict to accumulate seconds per phase of the wrappers (benchmarks); None = off.
profile: dict | None = None


class _Clock:
    """Adds the time since the previous tick to `profile[name]` when profiling is on."""

    def __init__(self):
        self.t = time.perf_counter() if profile is not None else 0.0

    def tick(self, name: str) -> None:
        if profile is not None:
            now = time.perf_counter()
            profile[name] = profile.get(name, 0.0) + now - self.t
            self.t = now


# ---------------------------------------------------------------------------------- build
def kernel_dirs() -> list[Path]:
    """Candidate folders holding the C++ sources: the source tree, then an installed share/."""
    return [Path(__file__).resolve().parents[2] / "kernels" / "cpu",
            Path(sys.prefix) / "share" / "voxmap_ros" / "kernels" / "cpu"]


def _sources() -> list[Path]:
    for d in kernel_dirs():
        files = sorted(d.glob("*.cpp")) if d.is_dir() else []
        if files:
            return files
    raise FileNotFoundError("no kernels/cpu/*.cpp found in " + ", ".join(str(d) for d in kernel_dirs()))


def cache_dir() -> Path:
    env = os.environ.get("VOXMAP_KERNEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "voxmap_ros" / "kernels"


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU model and its feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _compiler() -> str:
    cxx = os.environ.get("CXX", "g++")
    path = shutil.which(cxx)
    if path is None:
        raise FileNotFoundError(f"C++ compiler '{cxx}' not found on PATH (set CXX to choose one)")
    return path


def _build_key(cxx: str, sources: list[Path]) -> str:
    h = hashlib.sha256()
    for s in [*sources, *sorted(sources[0].parent.glob("*.h"))]:
        h.update(s.name.encode() + b"\0" + s.read_bytes() + b"\0")
    h.update(" ".join(CXX_FLAGS).encode())
    try:
        ver = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        ver = ""
    h.update(cxx.encode() + ver.encode())
    h.update(_cpu_identity().encode() + platform.machine().encode())
    return h.hexdigest()[:20]


def _build() -> Path:
    """Compile (or find in the cache) the shared library; returns its path. Raises on failure."""
    sources = _sources()
    cxx = _compiler()
    out_dir = cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"voxmap_kernels-{_build_key(cxx, sources)}.so"
    if lib.is_file():
        return lib
    lock_path = out_dir / (lib.name + ".lock")
    with open(lock_path, "a+") as lock_file:
        try:
            import fcntl
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        except (ImportError, OSError):
            pass                                  # no flock: the atomic rename still keeps it safe
        if lib.is_file():                         # another process built it while we waited
            return lib
        fd, tmp = tempfile.mkstemp(prefix=lib.stem + ".", suffix=".tmp.so", dir=out_dir)
        os.close(fd)
        try:
            cmd = [cxx, *CXX_FLAGS, *map(str, sources), "-o", tmp]
            log.info("building voxmap kernels: %s", " ".join(cmd))
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
            if res.returncode != 0:
                raise RuntimeError(f"compiler failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
            os.replace(tmp, lib)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return lib


class _RgbdParams(ctypes.Structure):       # mirrors RgbdParams in fusion.cpp
    _fields_ = [(n, ctypes.c_float) for n in (
        "fx", "fy", "cx", "cy", "voxel", "brick", "trunc", "half_voxel", "brick_clear", "dmin", "dmax",
        "max_weight", "l_hit", "l_miss", "l_min", "l_max", "radius", "pixel_round")] + [
        ("depth_weighting", ctypes.c_int), ("n_band", ctypes.c_int)]


class _LidarParams(ctypes.Structure):      # mirrors LidarParams in fusion.cpp
    _fields_ = [(n, ctypes.c_float) for n in (
        "voxel", "step", "trunc", "rmin", "rmax", "max_weight", "l_hit", "l_miss", "l_min", "l_max")] + [
        ("n_band", ctypes.c_int), ("free_space", ctypes.c_int)]


class _MeshTables(ctypes.Structure):      # mirrors MeshTables in mesh.cpp
    _fields_ = [(n, ctypes.c_void_p) for n in ("tri_table", "tri_count", "edge_corners", "edge_axis", "edge_lower")]


class _MeshArgs(ctypes.Structure):        # mirrors MeshArgs in mesh.cpp
    _fields_ = [("iso", ctypes.c_float), ("min_weight", ctypes.c_float), ("max_jump", ctypes.c_float),
                ("voxel", ctypes.c_double)]


def _declare(lib: ctypes.CDLL) -> None:
    P, I64, I, V = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, None
    sig = {
        "vx_abi_version": ([], I),
        "vx_ctx_new": ([], P),
        "vx_ctx_free": ([P], V),
        "vx_copy_bricks": ([P, P], V),
        "vx_rgbd_band": ([P, P, I64, I64, P, P, I], I64),
        "vx_rgbd_clearing": ([P, P, P, I64, P, I64, I64, P, P, I], I64),
        "vx_rgbd_update": ([P, P, I64, P, P, P, I64, I64, P, P, P, P, P, P, P, P, P, P, I], I64),
        "vx_copy_visited": ([P, P], V),
        "vx_lidar_trace": ([P, P, I64, P, P, I], I64),
        "vx_lidar_apply": ([P, P, I64, P, P, P, P, P, P, P, P, I], I64),
        "vx_copy_lidar_slots": ([P, P], V),
        "vx_lidar_stats": ([P, P], V),
        "vx_team_stats": ([P], V),
        "vx_brick_summaries": ([P, I64, P, P, P, P, P, P, I], V),
        "vx_closure_keys": ([P, I64, I, P, P, I, P, P, I, P, P], I64),
        "vx_closure_refresh": ([P, P, I64, P, P, I, P, P, I, P, ctypes.c_float, P, P, P], V),
        "vx_hash_find": ([P, I, P, I64, P], V),
        "vx_hash_insert_absent": ([P, P, I, P, P, I64, P, P], I64),
        "vx_morton_encode": ([P, I64, P, I64, P], V),
        "vx_morton_decode": ([P, I64, P, P], V),
        "vx_morton_ancestors": ([P, I64, I64, P], V),
        "vx_bricks_negative": ([P, I64, P, P, P, P, I], V),
        "vx_bricks_free": ([P, I64, P, P, P, ctypes.c_float, ctypes.c_float, P, I], V),
        "vx_mesh_count": ([I64, P, P, P, P, P, P, I], I64),
        "vx_mesh_fill": ([I64, P, P, P, P, P, P, P, P, P, P, P, P, I], V),
    }
    for name, (args, res) in sig.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = res


def _load() -> None:
    """Build and load once per process; records the reason on failure. Call with _lock held."""
    if _state["tried"]:
        return
    _state["tried"] = True
    try:
        path = _build()
        lib = ctypes.CDLL(str(path))
        _declare(lib)
        if lib.vx_abi_version() != ABI_VERSION:
            raise RuntimeError(f"kernel ABI {lib.vx_abi_version()} != expected {ABI_VERSION}")
        ctx = lib.vx_ctx_new()
        if not ctx:
            raise MemoryError("could not create the kernel context")
        _state.update(lib=lib, ctx=ctx, reason="")
    except Exception as e:                       # never raise from available(): report why instead
        _state["reason"] = f"{type(e).__name__}: {e}"
        log.warning("voxmap compiled kernels unavailable: %s", _state["reason"])


def available() -> bool:
    """True when the compiled kernels are built (building them on the first call) and loaded."""
    with _lock:
        _load()
        return _state["lib"] is not None


def unavailable_reason() -> str:
    """Why `available()` is False ('' when it is True, 'not built yet' before the first call)."""
    return _state["reason"]


def _lib():
    with _lock:
        _load()
        if _state["lib"] is None:
            raise RuntimeError(f"compiled kernels unavailable: {_state['reason']}")
        return _state["lib"], _state["ctx"]


# ---------------------------------------------------------------------------------- checks
def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _check_tensor(name: str, t, dtypes, shape) -> None:
    """shape: tuple with None for any size."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU for the compiled kernels, got {t.device}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name} must have dtype {' or '.join(map(str, dtypes))}, got {t.dtype}")
    if t.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous())")


def _check_octree(octree) -> None:
    if octree.device.type != "cpu":
        raise ValueError(f"the compiled kernels need a CPU octree, this one is on {octree.device}")
    cap = octree.brick_alive.shape[0]
    for name, dtype, shape in (("tsdf", torch.float16, (cap, 512)), ("weight", torch.float16, (cap, 512)),
                               ("occ", torch.float16, (cap, 512)), ("color", torch.uint8, (cap, 512, 3))):
        _check_tensor(f"octree.attrs['{name}']", octree.attrs[name], (dtype,), shape)
    _check_tensor("octree.brick_coord", octree.brick_coord, (torch.int32,), (cap, 3))
    _check_tensor("octree.brick_alive", octree.brick_alive, (torch.bool,), (cap,))
    _check_tensor("octree.brick_node", octree.brick_node, (torch.int32,), (cap,))
    n_nodes = octree.node_key.shape[0]
    for name, dtype in (("node_key", torch.int64), ("node_free_mask", torch.uint8), ("node_max_occ", torch.float32),
                        ("node_min_abs_tsdf", torch.float32), ("node_observed", torch.bool)):
        _check_tensor(f"octree.{name}", getattr(octree, name), (dtype,), (n_nodes,))


def _pose12(T: torch.Tensor, name: str):
    _check_tensor(name, T, (torch.float32, torch.float64), (4, 4))
    if not bool(torch.isfinite(T).all()):
        raise ValueError(f"{name} must be finite")
    return (ctypes.c_double * 12)(*T[:3].reshape(-1).tolist())


_threads = 0                     # 0: follow torch.get_num_threads()


def set_num_threads(n: int) -> None:
    """Threads for the kernels' parallel loops; 0 (the default) follows torch.get_num_threads().
    On a machine whose cores are busy with other work, 1 can be faster than oversubscribing."""
    global _threads
    if int(n) < 0:
        raise ValueError(f"thread count must be >= 0, got {n}")
    _threads = int(n)


def _nthreads() -> int:
    return _threads if _threads > 0 else max(1, torch.get_num_threads())


def _raise_for(code: int, what: str) -> None:
    if code == -1:
        raise ValueError(f"{what}: brick coordinates outside the representable range (the map is too "
                         "large for the voxel size, or the pose is far from the origin)")
    raise RuntimeError(f"{what}: kernel error {code}")


def _rgbd_params(octree, K: torch.Tensor, p) -> _RgbdParams:
    k = K.double()
    brick = p.voxel_size_m * 8
    return _RgbdParams(
        fx=float(k[0, 0]), fy=float(k[1, 1]), cx=float(k[0, 2]), cy=float(k[1, 2]),
        voxel=p.voxel_size_m, brick=brick, trunc=p.trunc_m, half_voxel=0.5 * p.voxel_size_m,
        brick_clear=octree.brick_size_m, dmin=p.rgbd_min_m, dmax=p.rgbd_max_m, max_weight=p.max_weight,
        l_hit=p.l_hit, l_miss=p.l_miss, l_min=p.l_min, l_max=p.l_max,
        radius=math.sqrt(3.0) * 0.5 * octree.brick_size_m, pixel_round=p.pixel_round,
        depth_weighting=int(bool(p.depth_weighting)), n_band=len(integrate.rgbd_band_fractions(p)))


def _lidar_params(p) -> _LidarParams:
    step = 0.5 * p.voxel_size_m
    return _LidarParams(
        voxel=p.voxel_size_m, step=step, trunc=p.trunc_m, rmin=p.lidar_min_m, rmax=p.lidar_max_m,
        max_weight=p.max_weight, l_hit=p.l_hit, l_miss=p.l_miss, l_min=p.l_min, l_max=p.l_max,
        n_band=int(math.floor(2 * p.trunc_m / step + 1e-6)) + 1, free_space=int(bool(p.lidar_free_space)))


# ---------------------------------------------------------------------------------- kernels
def integrate_rgbd_cpp(octree, depth_m: torch.Tensor, rgb: torch.Tensor | None, K: torch.Tensor,
                       T_W_C: torch.Tensor, p, brick_summaries: bool = True) -> torch.Tensor:
    """Compiled twin of integrate.integrate_rgbd_torch. depth_m (H, W) float32 metres (0/NaN = no
    reading), rgb (H, W, 3) uint8 or None, K (3, 3) float, T_W_C (4, 4) float; all CPU, contiguous.
    Returns the visited brick slots (M,) int64, sorted. With `brick_summaries`, every brick the
    frame changes gets its own node summary written as it is updated (as integrate_lidar_cpp)."""
    _check_tensor("depth_m", depth_m, (torch.float32,), (None, None))
    H, W = depth_m.shape
    if rgb is not None:
        _check_tensor("rgb", rgb, (torch.uint8,), (H, W, 3))
    _check_tensor("K", K, (torch.float32, torch.float64), (3, 3))
    T12 = _pose12(T_W_C, "T_W_C")
    _check_octree(octree)
    prm = _rgbd_params(octree, K, p)
    if not (prm.fx != 0 and prm.fy != 0 and math.isfinite(prm.fx) and math.isfinite(prm.fy)):
        raise ValueError(f"K must have finite non-zero focal lengths, got fx={prm.fx}, fy={prm.fy}")
    lib, ctx = _lib()
    nt = _nthreads()
    with _lock:
        clock = _Clock()
        m = lib.vx_rgbd_band(ctx, depth_m.data_ptr(), H, W, T12, ctypes.byref(prm), nt)
        if m < 0:
            _raise_for(m, "RGB-D band")
        band = torch.empty((m, 3), dtype=torch.int64)
        if m:
            lib.vx_copy_bricks(ctx, band.data_ptr())
        clock.tick("rgbd_band")
        cap = octree.brick_alive.shape[0]
        lib.vx_rgbd_clearing(ctx, octree.brick_alive.data_ptr(), octree.brick_coord.data_ptr(), cap,
                             depth_m.data_ptr(), H, W, T12, ctypes.byref(prm), nt)
        clock.tick("rgbd_clearing")
        if m:
            slots, _ = octree.allocate_bricks(band, distinct=True)      # the kernel's brick set
            slots = slots.contiguous()
        else:
            slots = torch.empty(0, dtype=torch.int64)
        clock.tick("rgbd_allocate")
        _check_octree(octree)                    # the pools may have grown: fresh pointers below
        a = octree.attrs
        n = lib.vx_rgbd_update(ctx, slots.data_ptr(), slots.numel(), octree.brick_coord.data_ptr(),
                               depth_m.data_ptr(), _ptr(rgb), H, W, T12, ctypes.byref(prm),
                               a["tsdf"].data_ptr(), a["weight"].data_ptr(),
                               a["color"].data_ptr() if rgb is not None else None, a["occ"].data_ptr(),
                               *map(_ptr, _node_summaries(octree) if brick_summaries else (None,) * 4), nt)
        out = torch.empty(n, dtype=torch.int64)
        if n:
            lib.vx_copy_visited(ctx, out.data_ptr())
        clock.tick("rgbd_update")
    return out


def _node_summaries(octree) -> tuple:
    """Where the fusion kernels write brick summaries: brick_node and the node summary pools."""
    return octree.brick_node, octree.node_max_occ, octree.node_min_abs_tsdf, octree.node_observed


def integrate_lidar_cpp(octree, points: torch.Tensor, T_W_L: torch.Tensor, p,
                        brick_summaries: bool = True) -> torch.Tensor:
    """Compiled twin of integrate.integrate_lidar_torch. points (N, 3) float32 sensor frame
    (non-finite / too close points are dropped), T_W_L (4, 4) float; CPU, contiguous.
    Returns the touched brick slots (M,) int64, sorted. With `brick_summaries`, the touched
    bricks' own node summaries are brought up to date too (their ancestors' are not): the kernel
    reads each brick right after writing it, which costs far less than a later pass."""
    _check_tensor("points", points, (torch.float32,), (None, 3))
    T12 = _pose12(T_W_L, "T_W_L")
    _check_octree(octree)
    prm = _lidar_params(p)
    lib, ctx = _lib()
    nt = _nthreads()
    with _lock:
        clock = _Clock()
        m = lib.vx_lidar_trace(ctx, points.data_ptr(), points.shape[0], T12, ctypes.byref(prm), nt)
        if m < 0:
            _raise_for(m, "LiDAR trace")
        if m == 0:
            return torch.zeros(0, dtype=torch.int64)
        coords = torch.empty((m, 3), dtype=torch.int64)
        lib.vx_copy_bricks(ctx, coords.data_ptr())
        keys = octree.brick_keys(coords)  # range-checked: the trace's brick set reaches farther
        clock.tick("lidar_trace")
        slots, _ = octree.allocate_brick_keys(keys, distinct=True)    # the kernel's brick set
        slots = slots.contiguous()
        clock.tick("lidar_allocate")
        _check_octree(octree)
        a = octree.attrs
        nodes = _node_summaries(octree) if brick_summaries else (None,) * 4
        n = lib.vx_lidar_apply(ctx, slots.data_ptr(), m, ctypes.byref(prm), a["tsdf"].data_ptr(),
                               a["weight"].data_ptr(), a["occ"].data_ptr(), *map(_ptr, nodes), nt)
        if n < 0:
            _raise_for(n, "LiDAR apply")
        out = torch.empty(n, dtype=torch.int64)
        lib.vx_copy_lidar_slots(ctx, out.data_ptr())
        clock.tick("lidar_apply")
    return out


def last_lidar_stats() -> dict:
    """Sizes of the last LiDAR integration (rays kept, voxels touched, band voxels, bricks) and
    microseconds in its kernel phases (the apply figure includes the allocation in between)."""
    lib, ctx = _lib()
    out = (ctypes.c_int64 * 10)()
    with _lock:
        lib.vx_lidar_stats(ctx, out)
    return dict(zip(("rays", "voxels_touched", "band_voxels", "bricks", "us_rays", "us_free", "us_band",
                     "us_alloc_apply", "us_free_walk", "us_band_merge"), list(out)))


def team_stats() -> dict:
    """Since the library was loaded: parallel regions that checked their threads' CPUs, and threads
    moved off a CPU a team mate was on (kernels/cpu/team.h; VOXMAP_SPREAD_THREADS=0 turns it off)."""
    lib, _ = _lib()
    out = (ctypes.c_int64 * 2)()
    lib.vx_team_stats(out)
    return {"regions": int(out[0]), "moves": int(out[1])}


def _checked_slots(octree, slots: torch.Tensor) -> torch.Tensor:
    """slots (N,) int64 of a CPU octree's brick pool, checked and contiguous."""
    _check_tensor("slots", slots, (torch.int64,), (None,))
    _check_octree(octree)
    if slots.numel() and (int(slots.min()) < 0 or int(slots.max()) >= octree.brick_alive.shape[0]):
        raise ValueError("slots out of range of the brick pool")
    return slots.contiguous()


def bricks_free_cpp(octree, slots: torch.Tensor, occ_max: float, tsdf_min: float) -> torch.Tensor:
    """Compiled twin of SparseVoxelOctree.bricks_free_torch: (N,) bool for alive slots (N,) int64
    of a CPU octree (contiguous CPU tensor)."""
    slots = _checked_slots(octree, slots)
    lib, _ = _lib()
    out = torch.empty(slots.numel(), dtype=torch.bool)
    a = octree.attrs
    lib.vx_bricks_free(slots.data_ptr(), slots.numel(), a["tsdf"].data_ptr(), a["weight"].data_ptr(),
                       a["occ"].data_ptr(), float(occ_max), float(tsdf_min), out.data_ptr(), _nthreads())
    return out


def brick_summaries_cpp(octree, slots: torch.Tensor):
    """The per-brick part of SparseVoxelOctree.update_summaries for alive slots (N,) int64 of a
    CPU octree (contiguous CPU tensor; results on the CPU):
    (max occupancy over seen voxels (N,) float32, -inf if none; min |TSDF| over weighted voxels
    (N,) float32, 1 if none; observed (N,) bool)."""
    slots = _checked_slots(octree, slots)
    lib, _ = _lib()
    n = slots.numel()
    mo = torch.empty(n, dtype=torch.float32)
    mt = torch.empty(n, dtype=torch.float32)
    ob = torch.empty(n, dtype=torch.bool)
    a = octree.attrs
    lib.vx_brick_summaries(slots.data_ptr(), n, a["tsdf"].data_ptr(), a["weight"].data_ptr(),
                           a["occ"].data_ptr(), mo.data_ptr(), mt.data_ptr(), ob.data_ptr(), _nthreads())
    return mo, mt, ob


def _tables(octree) -> tuple:
    """The octree's hash table(s) as vx_closure_* take them: new keys, values, bits, then the
    table being migrated from (null pointers when none)."""
    new, old = octree.table._new, octree.table._old
    out = []
    for t in (new, old):
        if t is None:
            out += [None, None, 0]
            continue
        _check_tensor("table keys", t.keys, (torch.int64,), (1 << t.bits,))
        _check_tensor("table values", t.values, (torch.int32,), (1 << t.bits,))
        out += [t.keys.data_ptr(), t.values.data_ptr(), t.bits]
    return tuple(out)


def refresh_closure_cpp(octree, parent_keys: torch.Tensor) -> None:
    """Compiled twin of SparseVoxelOctree._refresh_closure: parent keys (N,) int64 (levels >= 1)
    of a CPU octree and all their ancestors get their summaries recomputed from their children,
    bottom-up; missing nodes are created through the octree between the two compiled halves."""
    _check_tensor("parent_keys", parent_keys, (torch.int64,), (None,))
    _check_octree(octree)
    n = parent_keys.numel()
    if n == 0:
        return
    if int(morton.level_of(parent_keys).min()) < 1:
        raise ValueError("parent_keys must be keys of levels >= 1 (bricks have no children)")
    parent_keys = parent_keys.contiguous()
    lib, _ = _lib()
    keys = torch.empty(n * octree.levels, dtype=torch.int64)
    ids = torch.empty(n * octree.levels, dtype=torch.int64)
    m = lib.vx_closure_keys(parent_keys.data_ptr(), n, octree.levels, *_tables(octree), keys.data_ptr(),
                            ids.data_ptr())
    keys, ids = keys[:m], ids[:m]
    missing = ids < 0
    if bool(missing.any()):
        ids[missing] = octree._ensure_nodes(keys[missing])
        _check_octree(octree)                       # node pools may have grown
    lib.vx_closure_refresh(keys.data_ptr(), ids.data_ptr(), m, *_tables(octree), octree.node_free_mask.data_ptr(),
                           float(octree.free_logodds), octree.node_max_occ.data_ptr(),
                           octree.node_min_abs_tsdf.data_ptr(), octree.node_observed.data_ptr())


def hash_find_cpp(table_keys: torch.Tensor, bits: int, keys: torch.Tensor) -> torch.Tensor:
    """Compiled twin of hashtable._Table.find. table_keys (2^bits,) int64, keys (N,) int64 >= 0,
    both CPU. Returns the slot of each key (N,) int64, -1 where absent."""
    keys = keys.contiguous() if isinstance(keys, torch.Tensor) else keys
    _check_tensor("table_keys", table_keys, (torch.int64,), (1 << int(bits),))
    _check_tensor("keys", keys, (torch.int64,), (None,))
    lib, _ = _lib()
    out = torch.empty_like(keys)
    if keys.numel():
        lib.vx_hash_find(table_keys.data_ptr(), int(bits), keys.data_ptr(), keys.numel(), out.data_ptr())
    return out


def hash_insert_absent_cpp(table_keys: torch.Tensor, table_values: torch.Tensor, bits: int, keys: torch.Tensor,
                           values: torch.Tensor) -> int:
    """Compiled twin of hashtable._Table.insert_absent's probing (same resulting table, bitwise):
    writes unique absent keys (N,) int64 >= 0 with values (N,) int32 into table_keys (2^bits,)
    int64 / table_values (2^bits,) int32 in place (CPU, contiguous). Returns tombstones reused."""
    cap = 1 << int(bits)
    if isinstance(keys, torch.Tensor) and isinstance(values, torch.Tensor):
        keys, values = keys.contiguous(), values.contiguous()
    _check_tensor("table_keys", table_keys, (torch.int64,), (cap,))
    _check_tensor("table_values", table_values, (torch.int32,), (cap,))
    _check_tensor("keys", keys, (torch.int64,), (None,))
    _check_tensor("values", values, (torch.int32,), (keys.shape[0],))
    n = keys.numel()
    if n == 0:
        return 0
    scratch = torch.empty(2 * n, dtype=torch.int64)
    lib, _ = _lib()
    reused = lib.vx_hash_insert_absent(table_keys.data_ptr(), table_values.data_ptr(), int(bits), keys.data_ptr(),
                                       values.data_ptr(), n, scratch.data_ptr(), scratch.data_ptr() + 8 * n)
    if reused < 0:
        raise RuntimeError("hash table full: no free slot for an insert (the caller keeps the load <= 0.5)")
    return int(reused)


def morton_encode_cpp(coords: torch.Tensor, level) -> torch.Tensor:
    """Compiled twin of morton.encode for CPU tensors: coords (N, 3) int32/int64, level an int or
    (N,) int64 -> keys (N,) int64."""
    c = coords.to(torch.int64).contiguous() if isinstance(coords, torch.Tensor) else coords
    _check_tensor("coords", c, (torch.int64,), (None, 3))
    n = c.shape[0]
    lv = None
    if isinstance(level, torch.Tensor):
        lv = level.to(torch.int64).contiguous()
        _check_tensor("level", lv, (torch.int64,), (n,))
    out = torch.empty(n, dtype=torch.int64)
    if n:
        lib, _ = _lib()
        lib.vx_morton_encode(c.data_ptr(), n, lv.data_ptr() if lv is not None else None,
                             0 if lv is not None else int(level), out.data_ptr())
    return out


def morton_decode_cpp(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compiled twin of morton.decode for CPU tensors: keys (N,) int64 -> (coords (N, 3) int64,
    level (N,) int64)."""
    k = keys.contiguous() if isinstance(keys, torch.Tensor) else keys
    _check_tensor("keys", k, (torch.int64,), (None,))
    n = k.shape[0]
    coords = torch.empty((n, 3), dtype=torch.int64)
    levels = torch.empty(n, dtype=torch.int64)
    if n:
        lib, _ = _lib()
        lib.vx_morton_decode(k.data_ptr(), n, coords.data_ptr(), levels.data_ptr())
    return coords, levels


def morton_ancestors_cpp(keys: torch.Tensor, levels_up: int) -> torch.Tensor:
    """Compiled twin of morton.ancestors for CPU tensors: keys (N,) int64 -> (N, levels_up + 1)
    int64, column j the ancestor j levels up."""
    k = keys.contiguous() if isinstance(keys, torch.Tensor) else keys
    _check_tensor("keys", k, (torch.int64,), (None,))
    L = int(levels_up)
    if L < 0:
        raise ValueError(f"levels_up must be >= 0, got {levels_up}")
    out = torch.empty((k.shape[0], L + 1), dtype=torch.int64)
    if k.shape[0]:
        lib, _ = _lib()
        lib.vx_morton_ancestors(k.data_ptr(), k.shape[0], L, out.data_ptr())
    return out


_mesh_tables: dict = {}


def _mesh_table_struct() -> _MeshTables:
    """The marching-cubes tables of core.mc_table as int32 arrays (kept alive here), once."""
    if not _mesh_tables:
        from . import mc_table
        arrays = {"tri_table": mc_table.TRI_TABLE, "tri_count": mc_table.TRI_COUNT,
                  "edge_corners": mc_table.EDGE_CORNERS, "edge_axis": mc_table.EDGE_AXIS,
                  "edge_lower": mc_table.EDGE_LOWER_OFFSET}
        if tuple(mc_table.TRI_TABLE.shape) != (256, 5, 3):
            raise RuntimeError(f"mesh.cpp expects a (256, 5, 3) triangle table, got {tuple(mc_table.TRI_TABLE.shape)}")
        _mesh_tables["arrays"] = {k: v.to(torch.int32).contiguous() for k, v in arrays.items()}
        _mesh_tables["struct"] = _MeshTables(**{k: v.data_ptr() for k, v in _mesh_tables["arrays"].items()})
    return _mesh_tables["struct"]


def mesh_bricks_cpp(tsdf: torch.Tensor, weight: torch.Tensor, color: torch.Tensor | None, nb: torch.Tensor,
                    origins_vox: torch.Tensor, voxel_size_m: float, min_weight: float, iso: float = 0.0,
                    max_jump: float = math.inf):
    """Marching cubes over bricks, compiled twin of core.mesh.mesh_blocks on padded blocks.

    tsdf, weight: (U, 512) float16 copies of U bricks ([z][y][x] inside a brick); color: (U, 512, 3)
    uint8 or None; nb: (B, 8) int64 rows into those copies of each meshed brick's padded-block
    neighbours, column dx + 2 dy + 4 dz (-1 = none; column 0 is the brick itself); origins_vox:
    (B, 3) int64 global voxel index of each brick's voxel (0, 0, 0). All CPU. A sample counts when
    its weight >= max(min_weight, 1e-6) and its TSDF is finite; a cell is meshed only when its 8
    corners span at most max_jump (float32; inf = no limit; core.mesh.max_jump_tsdf).
    Returns the triangle soup (tri_vertices (T, 3, 3) float32 metres, tri_colors (T, 3, 3) uint8,
    tri_edge_keys (T, 3) int64, tri_block (T,) int64 index into the B bricks), bitwise equal to
    the reference's and in its order."""
    U = tsdf.shape[0] if isinstance(tsdf, torch.Tensor) else -1
    _check_tensor("tsdf", tsdf, (torch.float16,), (None, 512))
    _check_tensor("weight", weight, (torch.float16,), (U, 512))
    if color is not None:
        _check_tensor("color", color, (torch.uint8,), (U, 512, 3))
    _check_tensor("nb", nb, (torch.int64,), (None, 8))
    B = nb.shape[0]
    _check_tensor("origins_vox", origins_vox, (torch.int64,), (B, 3))
    if B and (int(nb.max()) >= U or int(nb.min()) < -1):
        raise ValueError(f"nb rows must lie in [-1, {U}), got [{int(nb.min())}, {int(nb.max())}]")
    from .marching_cubes import check_edge_key_range
    from .octree import BRICK
    check_edge_key_range(origins_vox, BRICK + 1)  # a brick's cells read one voxel of the next bricks
    tsdf, weight, nb, origins_vox = (t.contiguous() for t in (tsdf, weight, nb, origins_vox))
    color = color.contiguous() if color is not None else None
    lib, _ = _lib()
    tab = _mesh_table_struct()
    args = _MeshArgs(iso=float(iso), min_weight=float(max(min_weight, 1e-6)), max_jump=float(max_jump),
                     voxel=float(voxel_size_m))
    nt = _nthreads()
    counts = torch.empty(B, dtype=torch.int64)
    total = lib.vx_mesh_count(B, nb.data_ptr(), tsdf.data_ptr(), weight.data_ptr(), ctypes.byref(tab),
                              ctypes.byref(args), counts.data_ptr(), nt) if B else 0
    verts = torch.empty((total, 3, 3), dtype=torch.float32)
    cols = torch.empty((total, 3, 3), dtype=torch.uint8)
    keys = torch.empty((total, 3), dtype=torch.int64)
    tri_block = torch.empty(total, dtype=torch.int64)
    if total:
        offsets = range_starts(counts).contiguous()
        lib.vx_mesh_fill(B, nb.data_ptr(), tsdf.data_ptr(), weight.data_ptr(), _ptr(color), origins_vox.data_ptr(),
                         ctypes.byref(tab), ctypes.byref(args), offsets.data_ptr(), verts.data_ptr(), cols.data_ptr(),
                         keys.data_ptr(), tri_block.data_ptr(), nt)
    return verts, cols, keys, tri_block


def bricks_negative_cpp(octree, slots: torch.Tensor, min_weight: float, iso: float = 0.0) -> torch.Tensor:
    """(N,) bool for alive brick slots (N,) int64 (contiguous CPU tensor) of a CPU octree: the
    brick holds a voxel with TSDF < iso and weight >= max(min_weight, 1e-6)
    (core.mesh.may_have_surface's per-brick test)."""
    slots = _checked_slots(octree, slots)
    lib, _ = _lib()
    out = torch.empty(slots.numel(), dtype=torch.bool)
    args = _MeshArgs(iso=float(iso), min_weight=float(max(min_weight, 1e-6)), max_jump=math.inf, voxel=0.0)
    a = octree.attrs
    lib.vx_bricks_negative(slots.data_ptr(), slots.numel(), a["tsdf"].data_ptr(), a["weight"].data_ptr(),
                           ctypes.byref(args), out.data_ptr(), _nthreads())
    return out
