"""Per-scan cost of voxmap's LiDAR integration with an idle gap before each scan, as a live
sensor gives it (10 Hz: ~80 ms idle between scans), against scans back to back as in
`voxmap bench lidar`.

    .venv/bin/python benchmarks/lidar_idle_gap.py --gap-s 0      # back to back
    .venv/bin/python benchmarks/lidar_idle_gap.py --gap-s 0.08   # a 10 Hz sensor
    OMP_PROC_BIND=true .venv/bin/python benchmarks/lidar_idle_gap.py --gap-s 0.08

Livox HKU main building (../shared/data, or --data), 10 cm voxels, 50 m range, the first --scans
scans through `Mapper.integrate` after 3 warm-up scans into a throw-away map. Prints the median
and mean ms per scan. The machine is noisy: alternate the settings and re-run.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from voxmap_ros.bench.lidar import load_scans, make_config
from voxmap_ros.core.mapper import Mapper

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "livox-hku-mainbuilding"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--scans", type=int, default=100)
    p.add_argument("--gap-s", type=float, default=0.08, help="idle seconds before each scan")
    args = p.parse_args()
    cfg = make_config(argparse.Namespace(voxel_size_m=0.1, max_range_m=50.0, min_range_m=None, trunc_vox=4.0,
                                         backend="auto", reserve_bricks=None))
    scans = load_scans(args.data, args.scans)
    warm = Mapper(cfg)
    for f in scans[:3]:
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
