"""`make demo`: the whole product on a built-in example, over real DDS.

1. simulate a procedural room (ground-truth mesh) and write its RGB-D frames and LiDAR scans as a
   rosbag2 (sim/bag_writer.py);
2. start the mapping node as its own process (what `voxmap_node` runs, with sim time);
3. play the bag into it from a second process (ros/bag_player.py, publishing /clock);
4. wait until the node has worked through its queues, call `~/save_map`;
5. print frames received / integrated / dropped, ms per frame, voxels, map bytes, the mesh F-score
   against the ground truth and the output paths; stop the node (no processes left behind).

The ROS graph is private to the demo: a random ROS_DOMAIN_ID (unless one is set) and
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from .watch import NodeWatcher

DEMO_VOXEL_M = 0.04
DEMO_TAU_M = 0.05
NODE_NAME = "voxmap"
READY_TIMEOUT_S = 120.0          # node start: imports, compiled-kernel build on a fresh machine
DRAIN_TIMEOUT_S = 120.0


def _ros_env() -> dict:
    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid() ^ time.time_ns()).randint(30, 99)))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def node_command(out_dir: Path, extra_params: dict | None = None) -> list[str]:
    """The node process of the demo: the README's bag recipe (config/bag_replay.yaml: sim time,
    the player's latched TransformStamped poses, reliable sensor QoS, queues that hold the bag)
    plus the demo's voxel size, height band and output folder."""
    params = {
        "map.voxel_size_m": str(DEMO_VOXEL_M),
        "grid.z_min_m": "0.2", "grid.z_max_m": "1.8",
        "node.output_dir": str(out_dir),
    }
    params.update(extra_params or {})
    from .bag_player import replay_overlay
    from .node import process_command
    return process_command(NODE_NAME, params, params_file=replay_overlay())


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def run_ros_demo(out_dir: Path, seed: int = 0, n_frames: int = 60, n_scans: int = 20, rate: float = 1.0) -> int:
    from ..eval.metrics import mesh_metrics
    from ..sim.bag_writer import generate_bag

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bag = out_dir / "data" / "room_bag"
    print(f"[1/5] simulating an indoor room (seed {seed}) and writing a rosbag2 -> {bag}", flush=True)
    if bag.exists():
        import shutil
        shutil.rmtree(bag)
    info = generate_bag("indoor", seed, bag, n_frames=n_frames, n_scans=n_scans)
    env = _ros_env()
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = env["ROS_AUTOMATIC_DISCOVERY_RANGE"]
    domain = int(env["ROS_DOMAIN_ID"])
    node_log = open(out_dir / "node.log", "w")
    node_proc = player = watcher = None
    try:
        print(f"[2/5] starting the mapping node (ROS_DOMAIN_ID={domain}, log {out_dir / 'node.log'})", flush=True)
        node_proc = subprocess.Popen(node_command(out_dir), env=env, stdout=node_log, stderr=subprocess.STDOUT)
        watcher = NodeWatcher(NODE_NAME, domain)
        try:
            watcher.wait_ready(READY_TIMEOUT_S, node_proc)
        except RuntimeError as e:
            raise RuntimeError(f"{e}; see {out_dir / 'node.log'}") from None
        print(f"[3/5] playing the bag into it ({n_frames} RGB-D frames at 30 Hz, {n_scans} LiDAR scans at 10 Hz)",
              flush=True)
        player = subprocess.Popen([sys.executable, "-m", "voxmap_ros.ros.bag_player", str(bag), "--rate", str(rate)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        while player.poll() is None:
            watcher.spin_for(0.2)
        player_out = player.stdout.read().strip()
        if player.returncode != 0:
            raise RuntimeError(f"the bag player failed ({player.returncode}): {player_out}")
        print(f"      {player_out}", flush=True)
        print("[4/5] waiting for the node to work through its queues, then ~/save_map", flush=True)
        watcher.wait_idle(DRAIN_TIMEOUT_S, expected=n_frames + n_scans)
        paths = watcher.save_map()
        print("[5/5] scoring the mesh against the ground truth", flush=True)
        metrics = mesh_metrics(paths["mesh"], info["gt_mesh"], tau_m=DEMO_TAU_M)
        v = watcher
        stats = {k: v.values.get(k) for k in sorted(v.values)}
        summary = {"diagnostics": stats, "mesh_metrics": metrics, "outputs": paths, "bag": str(bag),
                   "wall_s": time.perf_counter() - t0}
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print("\nvoxmap demo summary (node over DDS, bag replayed with sim time)")
        for line in watcher.frame_report():
            print(f"  {line}")
        print(f"  ms per frame          median {v.num('ms_per_frame_median'):.1f}, p95 {v.num('ms_per_frame_p95'):.1f}")
        print(f"  voxels / bricks       {v.num('voxels'):.0f} / {v.num('bricks'):.0f}")
        print(f"  map bytes             {v.num('map_bytes'):.0f}")
        print(f"  mesh F-score          {metrics['fscore']:.3f} at tau {DEMO_TAU_M} m "
              f"(precision {metrics['precision']:.3f}, recall {metrics['recall']:.3f})")
        for k in ("mesh", "mesh_png", "occupancy_pgm", "occupancy_png", "map"):
            if k in paths:
                print(f"  {k:21s} {paths[k]}")
        print(f"  summary               {out_dir / 'summary.json'}")
        print(f"  total time            {summary['wall_s']:.1f} s")
        return 0
    finally:
        _stop(player)
        _stop(node_proc)
        if watcher is not None:
            watcher.close()
        node_log.close()
