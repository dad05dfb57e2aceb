"""Per-scan cost of voxmap's LiDAR integration with an idle gap before each scan, as a live
sensor gives it (10 Hz: ~80 ms idle between scans), or with OctoMap's turn before each scan (in
its own process, as in `voxmap bench lidar`'s default interleaved schedule), against scans back
to back, with the kernel phases.

    .venv/bin/python benchmarks/lidar_idle_gap.py --data ../shared/data/livox-hku-mainbuilding --gap-s 0      # back to back
    .venv/bin/python benchmarks/lidar_idle_gap.py --data ../shared/data/livox-hku-mainbuilding --gap-s 0.08   # a 10 Hz sensor
    OMP_PROC_BIND=true .venv/bin/python benchmarks/lidar_idle_gap.py --data ../shared/data/livox-hku-mainbuilding --gap-s 0.08
    .venv/bin/python benchmarks/lidar_idle_gap.py --data ../shared/data/livox-hku-mainbuilding --gap-s 0 --octomap-turns

A LiDAR dataset folder (--data), the settings and options of `voxmap bench lidar`
(10 cm voxels, 50 m range by default), the first --scans (100) scans through `Mapper.integrate` after
--warmup scans into a throw-away map (the bench's peer, repeat, summary and output options are
accepted and not used: voxmap runs alone, summaries as `Mapper.integrate` keeps them). Prints the
median and mean ms per scan and the median of each kernel phase (native.profile and
native.last_lidar_stats; the rest of a scan is Python around the kernels). The machine is noisy:
alternate the settings and re-run.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from voxmap_ros.bench import isolated, lidar
from voxmap_ros.core import native
from voxmap_ros.core.mapper import Mapper

PHASE_STATS = ("us_free_walk", "us_free", "us_band", "us_band_merge")

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    lidar.add_arguments(p)              # the settings of `voxmap bench lidar` (voxel, range, backend, ...)
    p.add_argument("--gap-s", type=float, default=0.08, help="idle seconds before each scan")
    p.add_argument("--octomap-turns", action="store_true",
                   help="before each scan, OctoMap inserts the same scan in its own process (untimed here)")
    p.set_defaults(scans=100)
    args = p.parse_args()
    cfg = lidar.make_config(args)
    scans = lidar.load_scans(args.data, args.scans)
    warm = Mapper(cfg)
    for f in scans[:args.warmup]:
        warm.integrate(f)
    peer = isolated.ProcessSystem(lidar.OctomapSystem(cfg, False)) if args.octomap_turns else None
    try:
        items = peer.prepare(scans) if peer else None
        tree = peer.make() if peer else None
        m, ms, phases = Mapper(cfg), [], {}
        for i, f in enumerate(scans):
            if peer:
                peer.integrate(tree, items[i])
            if args.gap_s > 0:
                time.sleep(args.gap_s)
            native.profile = {}
            t = time.perf_counter()
            m.integrate(f)
            ms.append((time.perf_counter() - t) * 1e3)
            for k, v in native.profile.items():
                phases.setdefault(k, []).append(v * 1e3)
            if m.backend == "cpp":
                st = native.last_lidar_stats()
                for k in PHASE_STATS:
                    phases.setdefault(k, []).append(st[k] / 1e3)
        native.profile = None
    finally:
        if peer:
            peer.close()
    print(f"gap {args.gap_s} s, OctoMap turns {'on' if peer else 'off'}, OMP_PROC_BIND "
          f"{os.environ.get('OMP_PROC_BIND', 'unset')}, backend {m.backend}, {len(ms)} scans: median "
          f"{np.median(ms):.2f} ms, mean {np.mean(ms):.2f} ms")
    for k, v in phases.items():
        print(f"  {k:<16} median {np.median(v):.2f} ms")


if __name__ == "__main__":
    main()
