"""`voxmap bench node`: the mapping node end to end over DDS.

The node runs as its own process (as on a robot); this process publishes recorded frames at a
fixed rate, stamped with their scheduled capture times (CameraInfo, depth 16UC1 + colour rgb8, or
PointCloud2), a third process streams the trajectory as TransformStamped at 100 Hz (like a robot's
odometry), and this process listens to `~/mesh` and `/diagnostics`.

Measured per run:
- throughput: frames published / received / integrated / dropped (by reason) and the achieved
  publish rate; "keeps up" = nothing dropped and every frame integrated;
- latency stamp -> map updated: the node's own figure (integration end minus the frame stamp,
  both wall clock), from its diagnostics;
- latency stamp -> mesh published: receive time of each `~/mesh` message minus its header stamp
  (the node stamps a mesh update with the newest frame it contains);
- ms per frame (integration only) from the node's diagnostics.
"""
from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..bench import common
from .watch import NodeWatcher

NODE = "voxmap_bench"
READY_TIMEOUT_S = 120.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="RGB-D dataset folder (depth/, color/, intrinsics.txt, poses.txt)")
    p.add_argument("--lidar-data", help="LiDAR dataset folder (velodyne/, poses.txt); adds a LiDAR run")
    p.add_argument("--rates-hz", default="15,30", help="RGB-D publish rates to run, comma-separated (default %(default)s)")
    p.add_argument("--lidar-rate-hz", type=float, default=10.0, help="LiDAR publish rate (default %(default)s)")
    p.add_argument("--frames", type=int, default=150, help="RGB-D frames per run (default %(default)s)")
    p.add_argument("--scans", type=int, default=100, help="LiDAR scans per run (default %(default)s)")
    p.add_argument("--voxel-size-m", type=float, default=0.02, help="RGB-D voxel size (default %(default)s)")
    p.add_argument("--lidar-voxel-size-m", type=float, default=0.1, help="LiDAR voxel size (default %(default)s)")
    p.add_argument("--queue-size", type=int, default=None, help="node.queue_size (default: the node's own default)")
    p.add_argument("--mesh-rate-hz", type=float, default=None,
                   help="node.mesh_rate_hz (default: the node's own default)")
    p.add_argument("--sensor-qos", choices=("reliable", "sensor_data"), default="reliable",
                   help="node.sensor_qos; this process publishes reliably either way (default %(default)s)")
    p.add_argument("--node-param", action="append", default=[], metavar="NAME=VALUE",
                   help="extra node parameter, e.g. node.executor=multi (repeatable)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--quiet", action="store_true")


def _node_command(params: dict) -> list[str]:
    from .node import process_command
    return process_command(NODE, params)


class _Client(NodeWatcher):
    """This process's rclpy side: the watcher's diagnostics (and ~/save_map client), plus publishers
    for the node's inputs and a mesh listener, served by a spinner thread of their own."""

    def __init__(self, domain_id: int):
        super().__init__(NODE, domain_id)
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2
        from std_srvs.srv import Trigger
        from visualization_msgs.msg import MarkerArray
        rel = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = {"depth": self.node.create_publisher(Image, "/camera/depth/image_raw", rel),
                    "color": self.node.create_publisher(Image, "/camera/color/image_raw", rel),
                    "info": self.node.create_publisher(CameraInfo, "/camera/depth/camera_info", rel),
                    "cloud": self.node.create_publisher(PointCloud2, "/lidar/points", rel),
                    }
        self.worst_lock_hold: tuple[float, str] = (0.0, "")     # longest map-lock hold by an output job
        self.mesh_latency_ms: list[float] = []
        latched = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        # Raw (serialized) mesh messages: turning them into Python objects (a Point per triangle corner)
        # would cost this process seconds per update, on the cores the node needs.
        self.node.create_subscription(MarkerArray, f"/{NODE}/mesh", self._on_mesh, latched, raw=True)
        self.ready = self.node.create_client(Trigger, f"/{NODE}/clear_map")
        # Subscriptions are served by a thread of their own, so that receiving big mesh messages
        # never delays the publishing loop (which would publish in bursts).
        import threading
        self._spinner = threading.Thread(target=self._spin, name="bench_client_spin", daemon=True)
        self._spinner.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:              # shutdown while spinning
            pass

    def _on_diag(self, msg) -> None:
        super()._on_diag(msg)
        hold = self.num("lock_hold_ms_max")
        if hold > self.worst_lock_hold[0]:
            self.worst_lock_hold = (hold, self.values.get("lock_hold_job", ""))

    def _on_mesh(self, raw: bytes) -> None:
        now = time.time_ns()
        stamp = mesh_stamp_ns(raw)
        if stamp:
            self.mesh_latency_ms.append((now - stamp) / 1e6)

    @staticmethod
    def spin_for(seconds: float) -> None:
        """Wait (the subscriptions are served by the spinner thread)."""
        time.sleep(max(0.0, seconds))

    def close(self) -> None:
        self.executor.shutdown()
        self._spinner.join(timeout=5)
        super().close()


def mesh_stamp_ns(raw: bytes) -> int | None:
    """Stamp of the first marker of a serialized MarkerArray (the node stamps every marker of an
    update alike, with the newest frame it contains); None for an empty array. CDR: 4 bytes of
    encapsulation, the uint32 marker count, then the first marker's header stamp (int32 sec,
    uint32 nanosec), little-endian for encapsulation kind 1."""
    if len(raw) < 16:
        return None
    little = raw[1] == 1
    count, sec, nsec = struct.unpack(("<" if little else ">") + "IiI", raw[4:16])
    return sec * 10**9 + nsec if count else None


def _rgbd_messages(frames, K):
    from voxmap_ros.poses import nearest_rigid
    from voxmap_ros.ros import conversions as conv
    H, W = frames[0].depth.shape
    out = []
    for f in frames:
        depth = f.depth if f.depth.dtype == np.uint16 else np.round(f.depth * 1000).astype(np.uint16)
        out.append((conv.numpy_to_image_msg(depth, "16UC1", 0, "camera"),
                    conv.numpy_to_image_msg(f.rgb, "rgb8", 0, "camera") if f.rgb is not None else None,
                    nearest_rigid(f.T_W_S)))
    return out, conv.K_to_camera_info(np.asarray(K, np.float64), W, H, 0, "camera")


def _lidar_messages(scans):
    from voxmap_ros.poses import nearest_rigid
    from voxmap_ros.ros import conversions as conv
    return [(conv.xyz_rgb_to_pointcloud2(np.asarray(s.points, np.float32), None, 0, "lidar"),
             nearest_rigid(s.T_W_S)) for s in scans]


POSE_RATE_HZ = 100.0          # the odometry-like pose stream of a robot
LEAD_S = 1.0                  # poses flow this long before the first frame's stamp
POSE_START_TIMEOUT_S = 120.0


def pose_stream_main(argv=None) -> None:
    """A separate process publishing the trajectory as TransformStamped at POSE_RATE_HZ, stamped
    with the wall clock, like a robot's odometry / TF publisher. argv: domain_id, poses .npy
    ((N, 4, 4) T_map_sensor), child frame, t0 file, period_ns. Once the node subscribes it picks
    t0 (the stamp of pose 0) LEAD_S ahead and writes it to the t0 file for the frame publisher.
    Before t0 it sends pose 0, after the last pose the last one (for one more second), in between
    it interpolates.
    (Publishing these small messages from the process that publishes the images made Fast DDS
    deliver them up to seconds late here; a robot's poses come from another process anyway.)"""
    import rclpy
    from rclpy.qos import QoSProfile
    from geometry_msgs.msg import TransformStamped  # noqa: F401  (message class loaded for rclpy)
    from voxmap_ros.poses import PoseBuffer
    from voxmap_ros.ros import conversions as conv
    argv = list(sys.argv[1:] if argv is None else argv)
    domain, path, child, t0_file, period = int(argv[0]), argv[1], argv[2], Path(argv[3]), int(argv[4])
    poses = np.load(path)
    rclpy.init(domain_id=domain)
    node = rclpy.create_node("voxmap_bench_poses")
    pub = node.create_publisher(TransformStamped, "/pose", QoSProfile(depth=100))
    end = time.monotonic() + POSE_START_TIMEOUT_S
    while pub.get_subscription_count() == 0 and time.monotonic() < end:
        time.sleep(0.02)
    t0 = time.time_ns() + int(LEAD_S * 1e9)
    buf = PoseBuffer(max_age_s=1e6, max_len=len(poses) + 1)
    for i, T in enumerate(poses):
        buf.add(t0 + i * period, T)
    t_end = t0 + (len(poses) - 1) * period
    tmp = t0_file.with_suffix(".tmp")
    tmp.write_text(str(t0))
    tmp.replace(t0_file)                       # atomic: the reader never sees half a number
    try:
        while time.time_ns() < t_end + 10**9:
            now = time.time_ns()
            T = buf.lookup(min(max(now, t0), t_end))
            pub.publish(conv.matrix_to_transform_stamped(T, now, "map", child))
            time.sleep(1.0 / POSE_RATE_HZ)
    finally:
        node.destroy_node()
        rclpy.shutdown()


def _set_stamp(msg, ns: int) -> None:
    msg.header.stamp.sec, msg.header.stamp.nanosec = ns // 10**9, ns % 10**9


def _run_one(kind: str, rate_hz: float, messages, info, params: dict, quiet: bool) -> dict:
    env = dict(os.environ)
    domain = int(env.get("ROS_DOMAIN_ID") or (os.getpid() % 60 + 30))
    env["ROS_DOMAIN_ID"] = str(domain)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    proc = subprocess.Popen(_node_command(params), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    client = poses_proc = None
    try:
        client = _Client(domain)
        end = time.monotonic() + READY_TIMEOUT_S
        while not client.ready.service_is_ready():
            if proc.poll() is not None:
                raise RuntimeError(f"node exited ({proc.returncode}): {proc.stderr.read()[-2000:]}")
            if time.monotonic() > end:
                raise RuntimeError("node did not come up")
            client.spin_for(0.1)
        subs_end = time.monotonic() + 10
        wanted = ["depth", "info"] if kind == "rgbd" else ["cloud"]
        while time.monotonic() < subs_end and not all(client.pub[w].get_subscription_count() for w in wanted):
            client.spin_for(0.05)
        client.spin_for(0.5)
        period_ns = int(round(1e9 / rate_hz))
        child = "camera" if kind == "rgbd" else "lidar"
        pose_file = Path(tempfile.mkdtemp(prefix="voxmap_bench_")) / "poses.npy"
        np.save(pose_file, np.stack([m[-1] for m in messages]))
        t0_file = pose_file.with_name("t0")
        poses_proc = subprocess.Popen(
            [sys.executable, "-c", "from voxmap_ros.ros.bench_node import pose_stream_main; pose_stream_main()",
             str(domain), str(pose_file), child, str(t0_file), str(period_ns)], env=env)
        end = time.monotonic() + POSE_START_TIMEOUT_S + 10
        while not t0_file.exists():
            if poses_proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError("the pose stream process did not start")
            time.sleep(0.02)
        t0_ns = int(t0_file.read_text())
        client.spin_for(max(0.0, (t0_ns - time.time_ns()) / 1e9))
        t0 = time.monotonic()
        for i, msg in enumerate(messages):
            ns = t0_ns + i * period_ns                # stamp = the scheduled capture time
            time.sleep(max(0.0, (ns - time.time_ns()) / 1e9))
            if kind == "rgbd":
                depth, color, _ = msg
                for m in (info, depth) + ((color,) if color is not None else ()):
                    _set_stamp(m, ns)
                client.pub["info"].publish(info)
                if color is not None:
                    client.pub["color"].publish(color)
                client.pub["depth"].publish(depth)
            else:
                cloud, _ = msg
                _set_stamp(cloud, ns)
                client.pub["cloud"].publish(cloud)
        achieved = (len(messages) - 1) / max(1e-9, time.monotonic() - t0) if len(messages) > 1 else 0.0
        # Drain: until every received frame is accounted for (integrated or dropped), the queue is
        # empty and nothing more has arrived for a while (frames lost in DDS never arrive).
        drain_end = time.monotonic() + 60
        n = len(messages)
        last_received, still_since = -1.0, time.monotonic()
        while time.monotonic() < drain_end:
            client.spin_for(0.3)
            received = client.num(f"received_{kind}")
            if received != last_received:
                last_received, still_since = received, time.monotonic()
            done = (client.num(f"integrated_{kind}") + client.num(f"empty_{kind}")
                    + sum(client.num(k) for k in client.values if k.startswith(("dropped_", "bad_"))))
            settled = received >= n or time.monotonic() - still_since > 3.0
            if settled and client.num(f"queue_{kind}") == 0 and done >= received:
                break
        client.spin_for(1.5)                  # one more mesh and diagnostics period
        v = client
        dropped = {k: v.num(k) for k in v.values if k.startswith("dropped_") and v.num(k)}
        lat = np.asarray(client.mesh_latency_ms)
        res = {"kind": kind, "rate_hz": rate_hz, "achieved_publish_hz": achieved, "published": n,
               "received": v.num(f"received_{kind}"), "integrated": v.num(f"integrated_{kind}"),
               "dropped": dropped, "dropped_total": sum(dropped.values()),
               "ms_per_frame_median": v.num("ms_per_frame_median"), "ms_per_frame_p95": v.num("ms_per_frame_p95"),
               "latency_map_ms_median": v.num("latency_ms_median"), "latency_map_ms_p95": v.num("latency_ms_p95"),
               "latency_mesh_ms_median": float(np.median(lat)) if lat.size else None,
               "latency_mesh_ms_p95": float(np.percentile(lat, 95)) if lat.size else None,
               "mesh_messages": int(lat.size),
               "lock_wait_ms_p95": v.num("lock_wait_ms_p95"),
               "lock_hold_ms_max": v.worst_lock_hold[0], "lock_hold_job": v.worst_lock_hold[1],
               "poses_received": v.num("received_pose"), "pose_lag_ms_median": v.num("pose_lag_ms_median"),
               "voxels": v.num("voxels"), "map_bytes": v.num("map_bytes")}
        res["keeps_up"] = bool(res["dropped_total"] == 0 and res["integrated"] >= n)
        if not quiet:
            print(f"  {kind} @ {rate_hz:g} Hz: integrated {res['integrated']:.0f}/{n}, dropped {res['dropped_total']:.0f}, "
                  f"{res['ms_per_frame_median']:.1f} ms/frame", file=sys.stderr, flush=True)
        return res
    finally:
        if poses_proc is not None and poses_proc.poll() is None:
            try:
                poses_proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                poses_proc.kill()
                poses_proc.wait()
        if client is not None:
            client.close()
        if proc.poll() is None:
            proc.send_signal(2)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run(args) -> dict:
    from ..bench.rgbd import load_frames
    rates = [float(r) for r in str(args.rates_hz).split(",") if r.strip()]
    if not rates or min(rates) <= 0:
        raise ValueError(f"--rates-hz must be positive numbers, got {args.rates_hz!r}")
    frames = load_frames(args.data, args.frames)
    msgs, info = _rgbd_messages(frames, frames[0].K)
    base = {"node.pose_source": "topic", "node.pose_topic": "/pose", "node.pose_topic_type": "TransformStamped",
            "node.sensor_qos": args.sensor_qos,
            "node.occupancy_rate_hz": "0.5", "node.diagnostics_rate_hz": "2.0"}
    if args.mesh_rate_hz is not None:
        base["node.mesh_rate_hz"] = str(args.mesh_rate_hz)
    if args.queue_size is not None:
        base["node.queue_size"] = str(args.queue_size)
    for item in args.node_param:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--node-param wants NAME=VALUE, got {item!r}")
        base[name.strip()] = value.strip()
    runs = []
    for r in rates:
        params = dict(base, **{"map.voxel_size_m": str(args.voxel_size_m), "node.cloud_topic": "",
                               "node.camera_info_topic": "/camera/depth/camera_info",
                               "node.depth_topic": "/camera/depth/image_raw", "node.color_topic": "/camera/color/image_raw"})
        runs.append(_run_one("rgbd", r, msgs, info, params, args.quiet))
    if args.lidar_data:
        from voxmap_ros.datasets.folder import LidarFolder
        ds = LidarFolder(args.lidar_data)
        scans = [ds[i] for i in range(min(args.scans, len(ds)))]
        params = dict(base, **{"map.voxel_size_m": str(args.lidar_voxel_size_m), "lidar.max_range_m": "50.0",
                               "node.depth_topic": "", "node.cloud_topic": "/lidar/points"})
        runs.append(_run_one("lidar", args.lidar_rate_hz, _lidar_messages(scans), None, params, args.quiet))
    return {"benchmark": "node", "command": common.command_line(), "machine": common.machine_info(),
            "image_size": list(frames[0].depth.shape[::-1]), "runs": runs}


def print_report(payload: dict, file=sys.stdout) -> None:
    print("Node over DDS (separate process), frames published at a fixed rate with wall-clock stamps", file=file)
    hdr = f"{'input':6s} {'rate Hz':>7s} {'sent Hz':>7s} {'integr.':>8s} {'dropped':>7s} {'ms/frame':>8s} " \
          f"{'map lat ms':>10s} {'mesh lat ms':>11s}  keeps up"
    print(hdr, file=file)
    for r in payload["runs"]:
        ml = "-" if r["latency_mesh_ms_median"] is None else f"{r['latency_mesh_ms_median']:.0f}"
        print(f"{r['kind']:6s} {r['rate_hz']:7.1f} {r['achieved_publish_hz']:7.1f} "
              f"{r['integrated']:4.0f}/{r['published']:<3d} {r['dropped_total']:7.0f} {r['ms_per_frame_median']:8.1f} "
              f"{r['latency_map_ms_median']:10.1f} {ml:>11s}  {r['keeps_up']}", file=file)


def main(args) -> int:
    return common.run_and_report(run, print_report, args)
