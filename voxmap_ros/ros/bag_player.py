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
            for conn, stamp_ns, raw in reader.messages():
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
    args, ros_args = ap.parse_known_args(argv)
    rclpy.init(args=ros_args)
    try:
        counts = play(args.bag, rate=args.rate, tf_topic=args.tf_topic, wait_subscribers_s=args.wait_subscribers_s)
        print("published: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    finally:
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
