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
    """The node process of the demo: pose topic fed by the player's TransformStamped stream."""
    params = {
        "use_sim_time": "true",
        "map.voxel_size_m": str(DEMO_VOXEL_M),
        "grid.z_min_m": "0.2", "grid.z_max_m": "1.8",
        "node.pose_source": "topic", "node.pose_topic": "/pose", "node.pose_topic_type": "TransformStamped",
        # The player latches its poses: a pose subscription that matches late (discovery under
        # load took longer than the player's start delay: 22 of 26 poses were lost) still gets them.
        "node.pose_durability": "transient_local",
        # A reliable message lost on the way is re-sent after the writer's next heartbeat (seconds
        # later): frames wait that long for their pose instead of being dropped.
        "node.pose_wait_s": "8.0",
        "node.sensor_qos": "reliable", "node.queue_size": "16",
        "node.output_dir": str(out_dir),
    }
    params.update(extra_params or {})
    from .node import process_command
    return process_command(NODE_NAME, params)


class _Watcher:
    """The demo's own rclpy node: waits for the node's services, reads /diagnostics."""

    def __init__(self, domain_id: int):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from std_srvs.srv import Trigger
        self.rclpy = rclpy
        self.ctx = rclpy.context.Context()
        rclpy.init(context=self.ctx, domain_id=domain_id)
        self.node = rclpy.create_node("voxmap_demo", context=self.ctx)
        self.values: dict[str, str] = {}
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.save = self.node.create_client(Trigger, f"/{NODE_NAME}/save_map")
        self.Trigger = Trigger
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)

    def _on_diag(self, msg) -> None:
        for st in msg.status:
            if st.hardware_id == "voxmap":
                self.values = {kv.key: kv.value for kv in st.values}

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=min(0.05, max(0.0, end - time.monotonic())))

    def num(self, key: str) -> float:
        try:
            return float(self.values.get(key, 0))
        except ValueError:
            return 0.0

    def call_save(self, timeout_s: float = 60.0):
        fut = self.save.call_async(self.Trigger.Request())
        end = time.monotonic() + timeout_s
        while not fut.done() and time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.1)
        if not fut.done():
            raise RuntimeError("~/save_map did not answer")
        return fut.result()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.ctx)


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _parse_paths(message: str) -> dict:
    out = {}
    for part in message.split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


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
        watcher = _Watcher(domain)
        end = time.monotonic() + READY_TIMEOUT_S
        while not watcher.save.service_is_ready():
            if node_proc.poll() is not None:
                raise RuntimeError(f"the node exited with code {node_proc.returncode}; see {out_dir / 'node.log'}")
            if time.monotonic() > end:
                raise RuntimeError(f"the node did not come up within {READY_TIMEOUT_S:.0f} s; see {out_dir / 'node.log'}")
            watcher.spin_for(0.2)
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
        expected = n_frames + n_scans
        end = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < end:
            watcher.spin_for(0.5)
            v = watcher
            received = v.num("received_rgbd") + v.num("received_lidar")
            queued = v.num("queue_rgbd") + v.num("queue_lidar")
            if received >= expected and queued == 0:
                break
        watcher.spin_for(1.2)                       # one more diagnostics period
        resp = watcher.call_save()
        if not resp.success:
            raise RuntimeError(f"~/save_map failed: {resp.message}")
        paths = _parse_paths(resp.message)
        print("[5/5] scoring the mesh against the ground truth", flush=True)
        metrics = mesh_metrics(paths["mesh"], info["gt_mesh"], tau_m=DEMO_TAU_M)
        v = watcher
        stats = {k: v.values.get(k) for k in sorted(v.values)}
        summary = {"diagnostics": stats, "mesh_metrics": metrics, "outputs": paths, "bag": str(bag),
                   "wall_s": time.perf_counter() - t0}
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        dropped = sum(v.num(k) for k in v.values if k.startswith("dropped_"))
        print("\nvoxmap demo summary (node over DDS, bag replayed with sim time)")
        print(f"  frames received       RGB-D {v.num('received_rgbd'):.0f}, LiDAR {v.num('received_lidar'):.0f}")
        print(f"  frames integrated     RGB-D {v.num('integrated_rgbd'):.0f}, LiDAR {v.num('integrated_lidar'):.0f}")
        print(f"  frames dropped        {dropped:.0f}")
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
