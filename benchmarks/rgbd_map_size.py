"""Cost of one RGB-D frame against the size of the map it is fused into.

    .venv/bin/python benchmarks/rgbd_map_size.py

Fills octrees (2 cm voxels) with cubes of 20^3, 40^3 and 63^3 bricks placed 32 m away from a
camera at the origin (none of them is seen), then times the compiled `integrate_rgbd_cpp` of a
640x480 frame of a wall at 2 m (median of 10 after 3 warm-up frames). A frame's own work is the
same in every case, so the growth with the map is what the frame pays per brick it does not see
(the clearing pass still looks at every alive brick, in a cheap vectorized pre-pass that keeps
only the bricks in the depth slab ahead of the camera). Prints one line per map size.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from voxmap_ros.config import VoxmapConfig
from voxmap_ros.core import integrate, native
from voxmap_ros.core.octree import SparseVoxelOctree


def main() -> None:
    if not native.available():
        raise SystemExit(f"compiled kernels unavailable: {native.unavailable_reason()}")
    cfg = VoxmapConfig()
    cfg.map.voxel_size_m = 0.02
    p = integrate.FusionParams.from_config(cfg)
    K = torch.tensor([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]], dtype=torch.float64)
    T = torch.eye(4, dtype=torch.float64)
    depth = torch.full((480, 640), 2.0)
    for side in (20, 40, 63):
        o = SparseVoxelOctree(0.02, initial_bricks=16)
        g = torch.stack(torch.meshgrid(*(torch.arange(side),) * 3, indexing="ij"), -1).reshape(-1, 3) + 200
        o.allocate_bricks(g.to(torch.int32), distinct=True)
        for _ in range(3):
            native.integrate_rgbd_cpp(o, depth, None, K, T, p)
        ms = []
        for _ in range(10):
            t = time.perf_counter()
            native.integrate_rgbd_cpp(o, depth, None, K, T, p)
            ms.append((time.perf_counter() - t) * 1e3)
        print(f"{o.num_bricks:8d} bricks in the map: {np.median(ms):.2f} ms per frame (median of 10)")


if __name__ == "__main__":
    main()
