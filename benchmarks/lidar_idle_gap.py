"""Per-scan cost of voxmap's LiDAR integration with an idle gap before each scan, as a live
sensor gives it (10 Hz: ~80 ms idle between scans), against scans back to back as in
`voxmap bench lidar`.

    .venv/bin/python benchmarks/lidar_idle_gap.py --data ../shared/data/livox-hku-mainbuilding --gap-s 0      # back to back
    .venv/bin/python benchmarks/lidar_idle_gap.py --data ../shared/data/livox-hku-mainbuilding --gap-s 0.08   # a 10 Hz sensor
    OMP_PROC_BIND=true .venv/bin/python benchmarks/lidar_idle_gap.py --data ../shared/data/livox-hku-mainbuilding --gap-s 0.08

A LiDAR dataset folder (--data), the settings and options of `voxmap bench lidar`
(10 cm voxels, 50 m range by default), the first --scans (100) scans through `Mapper.integrate` after
--warmup scans into a throw-away map (the bench's peer, repeat, summary and output options are
accepted and not used: voxmap runs alone, summaries as `Mapper.integrate` keeps them). Prints the
median and mean ms per scan. The machine is noisy: alternate the settings and re-run.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from voxmap_ros.bench import lidar
from voxmap_ros.core.mapper import Mapper

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    lidar.add_arguments(p)              # the settings of `voxmap bench lidar` (voxel, range, backend, ...)
    p.add_argument("--gap-s", type=float, default=0.08, help="idle seconds before each scan")
    p.set_defaults(scans=100)
    args = p.parse_args()
    cfg = lidar.make_config(args)
    scans = lidar.load_scans(args.data, args.scans)
    warm = Mapper(cfg)
    for f in scans[:args.warmup]:
        warm.integrate(f)
    m, ms = Mapper(cfg), []
    for f in scans:
        if args.gap_s > 0:
            time.sleep(args.gap_s)
        t = time.perf_counter()
        m.integrate(f)
        ms.append((time.perf_counter() - t) * 1e3)
    print(f"gap {args.gap_s} s, OMP_PROC_BIND {os.environ.get('OMP_PROC_BIND', 'unset')}, backend "
          f"{m.backend}, {len(ms)} scans: median {np.median(ms):.2f} ms, mean {np.mean(ms):.2f} ms")


if __name__ == "__main__":
    main()
