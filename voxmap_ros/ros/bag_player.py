"""A small rosbag2 player built on `rosbags` + rclpy, for machines without `ros2 bag play`.

Publishes every message of the bag on its topic at the recorded pace (scaled by --rate), and
/clock with the bag time so nodes with use_sim_time follow it. tf2_msgs is not available as a
PyPI wheel, so /tf and /tf_static transforms are re-published one by one as
geometry_msgs/TransformStamped on --tf-topic (the node's pose topic input understands them).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import rclpy
from geometry_msgs.msg import TransformStamped
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rosgraph_msgs.msg import Clock

from . import conversions as conv

_TYPES = {
    "sensor_msgs/msg/Image": ("sensor_msgs.msg", "Image"),
    "sensor_msgs/msg/CameraInfo": ("sensor_msgs.msg", "CameraInfo"),
    "sensor_msgs/msg/PointCloud2": ("sensor_msgs.msg", "PointCloud2"),
    "geometry_msgs/msg/PoseStamped": ("geometry_msgs.msg", "PoseStamped"),
    "geometry_msgs/msg/TransformStamped": ("geometry_msgs.msg", "TransformStamped"),
    "nav_msgs/msg/Odometry": ("nav_msgs.msg", "Odometry"),
}
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
ACK_TIMEOUT_S = 15.0
LATCHED = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


REPLAY_OVERLAY = "bag_replay.yaml"


def replay_overlay() -> Path:
    """config/bag_replay.yaml, the node's parameters for being fed by this player (from the source
    tree, or from the installed package's share folder)."""
    path = Path(__file__).resolve().parents[2] / "config" / REPLAY_OVERLAY
    if path.is_file():
        return path
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory("voxmap_ros")) / "config" / REPLAY_OVERLAY
    except Exception as e:                     # noqa: BLE001 - no ament index: say what is missing
        raise FileNotFoundError(f"config/{REPLAY_OVERLAY} not found next to the package ({path}) "
                                f"nor in an installed voxmap_ros share folder ({e})") from None


def _msg_class(type_name: str):
    mod, cls = _TYPES[type_name]
    return getattr(__import__(mod, fromlist=[cls]), cls)


def play(bag: Path, *, rate: float = 1.0, tf_topic: str = "/pose", wait_subscribers_s: float = 20.0,
         start_delay_s: float = 1.0, node_name: str = "voxmap_bag_player", progress=None) -> dict:
    """Publish the bag once. Returns counts per topic. rclpy must be initialised."""
    from rosbags.highlevel import AnyReader
    node = rclpy.create_node(node_name)
    counts: dict[str, int] = {}
    try:
        with AnyReader([Path(bag)]) as reader:
            pubs, tf_conns = {}, []
            for c in reader.connections:
                if c.msgtype in _TYPES:
                    if c.topic not in pubs:
                        pubs[c.topic] = node.create_publisher(_msg_class(c.msgtype), c.topic, RELIABLE)
                elif c.msgtype == "tf2_msgs/msg/TFMessage":
                    tf_conns.append(c)
            played = [c for c in reader.connections if c.msgtype in _TYPES or c in tf_conns]
            skipped = sorted({f"{c.topic} ({c.msgtype})" for c in reader.connections if c not in played})
            if skipped:
                print(f"voxmap_bag_player: topics of types it does not play, not played: {', '.join(skipped)}",
                      file=sys.stderr, flush=True)
            tf_pub = node.create_publisher(TransformStamped, tf_topic, LATCHED) if tf_conns else None
            clock_pub = node.create_publisher(Clock, "/clock", 10)
            # The re-published transforms matter as much as the sensor topics: a frame without its
            # pose is dropped (seen: the player started before the node's pose subscription matched,
            # and 16 of 20 frames were dropped for want of a pose).
            needed = dict(pubs, **({tf_topic: tf_pub} if tf_pub is not None else {}))
            missing = _wait_for_subscribers(needed, wait_subscribers_s)
            if missing:
                print(f"voxmap_bag_player: no subscriber after {wait_subscribers_s:g} s on {', '.join(missing)}; "
                      "playing anyway", file=sys.stderr, flush=True)
            # A publisher that sees its subscriber does not mean the subscriber has matched the
            # publisher yet (discovery is asymmetric); the first messages could be lost without
            # this pause.
            time.sleep(start_delay_s)
            t0_bag, t0_wall = None, time.monotonic()
            for conn, stamp_ns, raw in reader.messages(connections=played):
                if t0_bag is None:
                    t0_bag = stamp_ns
                due = t0_wall + (stamp_ns - t0_bag) / 1e9 / max(rate, 1e-6)
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                clock_pub.publish(Clock(clock=conv.ns_to_stamp(stamp_ns)))
                if conn.msgtype == "tf2_msgs/msg/TFMessage":
                    tf_msg = reader.deserialize(raw, conn.msgtype)
                    for tr in tf_msg.transforms:
                        tf_pub.publish(_to_transform_stamped(tr))
                else:
                    _publish_raw(pubs[conn.topic], raw, conn.msgtype)
                counts[conn.topic] = counts.get(conn.topic, 0) + 1
                if progress is not None:
                    progress(counts)
            _wait_for_acks(list(needed.values()), ACK_TIMEOUT_S)
    finally:
        node.destroy_node()
    return counts


def _wait_for_acks(pubs: list, timeout_s: float) -> None:
    """Keep the publishers alive until their subscribers acknowledged every message: a reliable
    message lost on the way (seen under load: 25 of 26 poses) is only re-sent after the writer's
    next heartbeat, and a player that exits first takes the repair with it."""
    from rclpy.duration import Duration
    deadline = time.monotonic() + timeout_s
    for pub in pubs:
        left = deadline - time.monotonic()
        if left <= 0 or not pub.wait_for_all_acked(Duration(seconds=left)):
            print(f"voxmap_bag_player: '{pub.topic_name}' not acknowledged within {timeout_s:g} s", file=sys.stderr,
                  flush=True)
            return


def _to_transform_stamped(tr) -> TransformStamped:
    """rosbags' geometry_msgs/TransformStamped -> the rclpy one."""
    out = TransformStamped()
    out.header.stamp.sec, out.header.stamp.nanosec = int(tr.header.stamp.sec), int(tr.header.stamp.nanosec)
    out.header.frame_id = tr.header.frame_id
    out.child_frame_id = tr.child_frame_id
    t, q = tr.transform.translation, tr.transform.rotation
    out.transform.translation.x, out.transform.translation.y, out.transform.translation.z = t.x, t.y, t.z
    out.transform.rotation.x, out.transform.rotation.y = q.x, q.y
    out.transform.rotation.z, out.transform.rotation.w = q.z, q.w
    return out


def _publish_raw(pub, raw: bytes, msgtype: str) -> None:
    """Send the bag's CDR bytes as they are (no Python message object in between: the player then
    costs little CPU next to the node it feeds); rclpy versions that take no bytes get a message."""
    try:
        pub.publish(bytes(raw))
    except TypeError:
        pub.publish(deserialize_message(bytes(raw), _msg_class(msgtype)))


def _wait_for_subscribers(pubs: dict, timeout_s: float) -> list[str]:
    """Wait until every publisher has a subscriber; returns the topics still without one."""
    end = time.monotonic() + timeout_s
    while True:
        missing = sorted(t for t, p in pubs.items() if p.get_subscription_count() == 0)
        if not missing or time.monotonic() >= end:
            return missing
        time.sleep(0.05)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="voxmap_bag_player", description=__doc__)
    ap.add_argument("bag", type=Path)
    ap.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    ap.add_argument("--tf-topic", default="/pose", help="where /tf transforms are re-published (TransformStamped)")
    ap.add_argument("--wait-subscribers-s", type=float, default=20.0,
                    help="wait this long for every topic to have a subscriber, seconds (default %(default)s)")
    ap.add_argument("--save-map", action="store_true",
                    help="after playing, wait until the node has worked through its queues, call its ~/save_map "
                         "and print what it did with the frames (received / integrated / dropped by reason) and "
                         "the paths of its outputs")
    ap.add_argument("--node", default="voxmap",
                    help="the mapping node for --save-map (name, with its namespace if any) (default %(default)s)")
    ap.add_argument("--drain-timeout-s", type=float, default=120.0,
                    help="--save-map: longest wait for the node's queues to empty, seconds (default %(default)s)")
    args, ros_args = ap.parse_known_args(argv)
    if not args.rate > 0:
        ap.error(f"--rate must be > 0, got {args.rate}")
    if not args.bag.exists():
        ap.error(f"bag not found: {args.bag}")
    rclpy.init(args=ros_args)
    watcher = None
    try:
        if args.save_map:
            # Subscribed before playing, so every diagnostics report is seen.
            from .watch import NodeWatcher
            watcher = NodeWatcher(args.node)
            watcher.wait_ready(args.wait_subscribers_s)
        counts = play(args.bag, rate=args.rate, tf_topic=args.tf_topic, wait_subscribers_s=args.wait_subscribers_s)
        print("published: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())), flush=True)
        if watcher is not None:
            return _report(watcher, args.drain_timeout_s)
    except RuntimeError as e:
        print(f"voxmap_bag_player: {e}", file=sys.stderr)
        return 2
    finally:
        if watcher is not None:
            watcher.close()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


def _report(watcher, drain_timeout_s: float) -> int:
    if not watcher.wait_idle(drain_timeout_s):
        print(f"voxmap_bag_player: the node still had frames queued after {drain_timeout_s:g} s; saving anyway",
              file=sys.stderr, flush=True)
    paths = watcher.save_map()
    for line in watcher.frame_report():
        print(line)
    for k, v in paths.items():
        print(f"{k:21s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
