"""Time the compiled fusion kernels (voxmap_ros.core.native) against the torch reference.

    .venv/bin/python benchmarks/bench_fusion_kernels.py rgbd  --frames 100
    .venv/bin/python benchmarks/bench_fusion_kernels.py lidar --frames 100

RGB-D: 7-Scenes redkitchen at 2 cm voxels, truncation 4 voxels, depth 0.1-5 m. LiDAR: Livox HKU
main building at 10 cm voxels, 50 m max range. Data under ../shared/data (or --data). Reports
ms/frame (median and mean) for the integrate_*_cpp call, its phases, and the
octree.update_summaries(slots) the mapper calls after each frame; with --proposals the same again
with the proposed octree.py changes patched into the instance (see apply_octree_proposals); then
the torch reference on the same frames (fresh octree). Frames are loaded before timing. The machine is shared and noisy:
compare medians, and re-run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voxmap_ros.config import VoxmapConfig  # noqa: E402
from voxmap_ros.core import integrate, morton, native  # noqa: E402
from voxmap_ros.core.octree import SparseVoxelOctree  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_rgbd(root: Path, n: int, stride: int):
    import cv2
    K = torch.from_numpy(np.loadtxt(root / "intrinsics.txt"))
    poses = np.loadtxt(root / "poses.txt").reshape(-1, 4, 4)
    frames = []
    for i in range(0, min(n * stride, len(poses)), stride):
        d = cv2.imread(str(root / f"depth/{i:06d}.png"), cv2.IMREAD_UNCHANGED).astype(np.float32)
        d[d == 65535] = 0
        rgb = cv2.cvtColor(cv2.imread(str(root / f"color/{i:06d}.jpg")), cv2.COLOR_BGR2RGB)
        frames.append((torch.from_numpy(d / 1000.0), torch.from_numpy(np.ascontiguousarray(rgb)), K,
                       torch.from_numpy(poses[i].copy())))
    return frames


def load_lidar(root: Path, n: int, stride: int):
    rows = np.loadtxt(root / "poses.txt")
    frames = []
    for i in range(0, min(n * stride, len(rows)), stride):
        pts = np.fromfile(root / f"velodyne/{i:06d}.bin", dtype=np.float32).reshape(-1, 4)[:, :3]
        T = np.eye(4)
        T[:3] = rows[i].reshape(3, 4)
        frames.append((torch.from_numpy(np.ascontiguousarray(pts)), torch.from_numpy(T)))
    return frames


def apply_octree_proposals(oc: SparseVoxelOctree) -> None:
    """Monkeypatch one octree instance with the two changes proposed for octree.py, to measure what
    they would save (octree.py itself is untouched):
    - _expand_pruned returns at once while no subtree has been pruned (no free-mask bit set);
    - update_summaries takes the per-brick part from the compiled kernel."""
    orig_expand = oc._expand_pruned

    def expand_pruned(keys):
        if not bool(oc.node_free_mask.any()):
            return torch.zeros(keys.numel(), dtype=torch.bool, device=oc.device)
        return orig_expand(keys)

    def update_summaries(slots):
        slots = torch.unique(slots)
        slots = slots[oc.brick_alive[slots]]
        if slots.numel() == 0:
            return
        mo, mt, ob = native.brick_summaries_cpp(oc, slots)
        nodes = oc.brick_node[slots].long()
        oc.node_max_occ[nodes], oc.node_min_abs_tsdf[nodes], oc.node_observed[nodes] = mo, mt, ob
        oc._refresh_ancestors(morton.parent(oc.node_key[nodes]), drop_empty=False)

    oc._expand_pruned = expand_pruned
    oc.update_summaries = update_summaries


def run(kind: str, frames, p, voxel: float, fn, warmup: int, proposals: bool = False):
    oc = SparseVoxelOctree(voxel)
    if proposals:
        apply_octree_proposals(oc)
    integ, summ = [], []
    native.profile = None
    prof: dict = {}
    for i, fr in enumerate(frames):
        if i == warmup:
            native.profile = prof
        t0 = time.perf_counter()
        slots = fn(oc, *fr, p)
        t1 = time.perf_counter()
        oc.update_summaries(slots)
        t2 = time.perf_counter()
        if i >= warmup:
            integ.append(t1 - t0)
            summ.append(t2 - t1)
    native.profile = None
    n = max(len(integ), 1)
    return np.array(integ) * 1e3, np.array(summ) * 1e3, {k: v * 1e3 / n for k, v in prof.items()}, oc


def report(name, integ, summ, phases):
    tot = integ + summ
    print(f"  {name:6s} integrate median {np.median(integ):7.2f} mean {integ.mean():7.2f} | "
          f"update_summaries median {np.median(summ):6.2f} mean {summ.mean():6.2f} | "
          f"total median {np.median(tot):7.2f} mean {tot.mean():7.2f} ms/frame ({len(integ)} frames)")
    if phases:
        print("         phases (mean ms): " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["rgbd", "lidar"])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--torch-frames", type=int, default=20, help="frames for the (slow) torch reference; 0 = skip")
    ap.add_argument("--threads", type=int, default=0, help="torch / kernel threads (0 = torch default)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--proposals", action="store_true",
                    help="also time the compiled path with the proposed octree.py changes patched in")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not native.available():
        sys.exit(f"compiled kernels unavailable: {native.unavailable_reason()}")
    cfg = VoxmapConfig()
    if args.kind == "rgbd":
        cfg.map.voxel_size_m, cfg.tsdf.trunc_vox = 0.02, 4.0
        cfg.rgbd.min_range_m, cfg.rgbd.max_range_m = 0.1, 5.0
        frames = load_rgbd(args.data / "7scenes-redkitchen", args.frames + args.warmup, args.stride)
        cpp, ref = native.integrate_rgbd_cpp, integrate.integrate_rgbd_torch
    else:
        cfg.map.voxel_size_m, cfg.lidar.max_range_m = 0.1, 50.0
        frames = load_lidar(args.data / "livox-hku-mainbuilding", args.frames + args.warmup, args.stride)
        cpp, ref = native.integrate_lidar_cpp, integrate.integrate_lidar_torch
    p = integrate.FusionParams.from_config(cfg)
    print(f"{args.kind}: {len(frames)} frames ({args.warmup} warm-up), voxel {cfg.map.voxel_size_m} m, "
          f"{torch.get_num_threads()} threads")
    integ, summ, phases, oc = run(args.kind, frames, p, cfg.map.voxel_size_m, cpp, args.warmup)
    report("cpp", integ, summ, phases)
    print(f"         map: {oc.num_bricks} bricks")
    if args.proposals:
        integ, summ, phases, _ = run(args.kind, frames, p, cfg.map.voxel_size_m, cpp, args.warmup, proposals=True)
        report("cpp+P", integ, summ, phases)
    if args.torch_frames:
        n = min(args.torch_frames + args.warmup, len(frames))
        integ, summ, _, _ = run(args.kind, frames[:n], p, cfg.map.voxel_size_m, ref, min(args.warmup, n - 1))
        report("torch", integ, summ, {})


if __name__ == "__main__":
    main()
