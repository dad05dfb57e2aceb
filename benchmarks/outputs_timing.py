"""What writing a run's outputs costs, for a map file written by `voxmap replay`.

    voxmap replay ../shared/data/livox-hku-mainbuilding --out out/livox5                     # 5 cm
    voxmap replay ../shared/data/livox-hku-mainbuilding --out out/livox10 --config config/lidar_solid_state.yaml
    .venv/bin/python benchmarks/outputs_timing.py out/livox5/map.npz [--repeat 2]

Loads the map, then per repeat times: the full-map mesh (`Mapper.extract_mesh`), the part of a
node's `~/save_map` that holds the map lock (`outputs.capture_outputs`: mesh, 2D grid, map
snapshot) and the part that does not (`outputs.write_captured`: deflated map file, PLY, PGM/YAML,
previews, into a temporary folder). Prints one line per repeat and the map file's size.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from voxmap_ros.core.mapper import Mapper
from voxmap_ros.outputs import capture_outputs, write_captured


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("map", help="a map file (.npz) written by voxmap replay or ~/save_map")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    t = time.perf_counter()
    m = Mapper.load(args.map)
    s = m.summary(nodes=False)
    print(f"{args.map}: {s['bricks']} bricks, {s['voxels']} voxels at {s['voxel_size_m']} m; "
          f"loaded in {time.perf_counter() - t:.2f} s")
    with tempfile.TemporaryDirectory() as out:
        for i in range(args.repeat):
            t0 = time.perf_counter()
            mesh = m.extract_mesh()
            t1 = time.perf_counter()
            cap = capture_outputs(m)
            t2 = time.perf_counter()
            paths = write_captured(cap, out)
            t3 = time.perf_counter()
            print(f"repeat {i}: extract_mesh {t1 - t0:.2f} s ({len(mesh.triangles)} triangles), "
                  f"capture_outputs (under the node's lock) {t2 - t1:.2f} s, write_captured {t3 - t2:.2f} s, "
                  f"map file {os.path.getsize(paths['map']) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
