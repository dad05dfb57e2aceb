"""Shared fixtures for the core tests: configs, a small synthetic indoor dataset, helpers.

Everything here is synthetic and made by the project itself (voxmap_ros.sim); the real recordings
under ../shared/data are optional and tests that use them skip when the folder is absent.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from voxmap_ros.config import VoxmapConfig
from voxmap_ros.core import native
from voxmap_ros.sim import indoor_camera_trajectory, make_scene, render_rgbd
from voxmap_ros.sim.dataset_writer import default_intrinsics

# Real recordings (optional): <project root>/../shared/data
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# The two CPU backends, for pytest.mark.parametrize("backend", CPU_BACKENDS): the compiled one
# is skipped, with the reason, where its kernels cannot be built (no compiler).
CPU_BACKENDS = ["torch", pytest.param("cpp", marks=pytest.mark.skipif(
    not native.available(), reason=f"compiled kernels unavailable: {native.unavailable_reason()}"))]

# Small images keep the suite fast on 2 CPU cores.
IMG_W, IMG_H = 160, 120
SMALL_K = default_intrinsics(IMG_W, IMG_H)


def require_shared_data(sub: str = "") -> Path:
    """Path to a folder of the shared real data, or skip the calling test when it is absent."""
    p = SHARED_DATA / sub
    if not p.exists():
        pytest.skip(f"shared data not found at {p}")
    return p


def make_config(voxel_size_m: float = 0.05, **overrides) -> VoxmapConfig:
    """A config on the torch backend (CPU) with `section.key=value` overrides (dots as '__')."""
    cfg = VoxmapConfig()
    cfg.map.backend = "torch"
    cfg.map.voxel_size_m = voxel_size_m
    cfg.map.initial_bricks = 256
    for k, v in overrides.items():
        cfg.set(k.replace("__", "."), v)
    cfg.validate()
    return cfg


def octree_state(octree) -> dict[str, torch.Tensor]:
    """Clones of every tensor of an octree (pools, free lists, hash tables) and of the voxel
    attributes of the live bricks (rows of free slots hold no map data and may be uninitialised)."""
    out = {}
    for name, v in vars(octree).items():
        if isinstance(v, torch.Tensor):
            out[name] = v.clone()
    alive = octree.brick_alive
    for name, t in octree.attrs.items():
        out[f"attr_{name}"] = t[alive].clone()
    table = octree.table
    for tname in ("_new", "_old"):
        t = getattr(table, tname)
        if t is not None:
            out[f"table{tname}_keys"] = t.keys.clone()
            out[f"table{tname}_values"] = t.values.clone()
    out["table_cursor"] = torch.tensor(table._cursor)
    return out


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k].view(torch.uint8) if a[k].dtype.is_floating_point else a[k],
                           b[k].view(torch.uint8) if b[k].dtype.is_floating_point else b[k]), k


@pytest.fixture(scope="module")
def single_thread():
    """Run a test module with one torch thread. These tests are dominated by many small tensor ops; on a
    shared 2-core machine two spinning OpenMP threads per process made them 5-30x slower under
    load, while one thread costs little when the machine is idle. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@dataclass
class IndoorData:
    """The indoor scene (seed 0) rendered from a few poses at 160x120 (noise-free and noisy)."""
    scene: object
    K: np.ndarray
    poses: list
    frames: list          # (depth_m float32, rgb uint8, T_W_C), noisy


@pytest.fixture(scope="session")
def indoor_scene():
    return make_scene("indoor", 0)


@pytest.fixture(scope="session")
def indoor_data(indoor_scene) -> IndoorData:
    poses = indoor_camera_trajectory(indoor_scene, 12, seed=0)
    rng = np.random.default_rng(0)
    frames = []
    for T in poses:
        d, c, _ = render_rgbd(indoor_scene, SMALL_K, T, IMG_W, IMG_H, depth_noise=True, rng=rng)
        frames.append((d, c, T))
    return IndoorData(indoor_scene, SMALL_K, poses, frames)


def far_scene(offset_m: float):
    """A random density cloud and a camera looking at it, both moved by `offset_m` (whole cells
    along each axis, so the cells are the same)."""
    from voxmap_ros.render import VoxelSet, make_camera
    from voxmap_ros.sim import look_at
    g = torch.Generator().manual_seed(2)
    coords = torch.unique(torch.randint(-3, 3, (60, 3), generator=g), dim=0)
    n = coords.shape[0]
    lat = torch.round(torch.tensor([offset_m, -offset_m / 2, offset_m / 3], dtype=torch.float64) / 0.1)
    vs = VoxelSet(coords + lat.long(), torch.zeros(n, dtype=torch.int64),
                  torch.rand(n, 8, dtype=torch.float64, generator=g) * 30,
                  torch.rand(n, 3, dtype=torch.float64, generator=g), 0.1)
    shift = (lat * 0.1).numpy()
    K = np.array([[12.0, 0, 8], [0, 12.0, 6], [0, 0, 1]])
    return vs, make_camera(K, look_at(tuple(np.array([0.41, 0.33, -0.72]) + shift), tuple(shift + 0.01)), 16, 12,
                           0.05, 20.0)
