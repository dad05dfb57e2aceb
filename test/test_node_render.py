"""VoxmapNode's rendered views (~/render/depth, ~/render/color, ~/render/camera_info) over real DDS.

The set-up, the synthetic wall and the test client come from test_node.py (a flat wall x = 2 m,
camera at (0, 0, 1) looking along +x, 160x120, fx = fy = 120; LiDAR at (0, 0, 1)). One node for the
module, started with render.rate_hz = 0; the tests run in file order: nothing is published while
the rate is 0, nothing (and no error) before an RGB-D frame gives a camera, then the latest
camera's view, a fixed viewpoint, and off again -- all switched by run-time parameter changes.
"""
from __future__ import annotations

import gc
import math
import os
import random
import threading
import time
import uuid

import numpy as np
import pytest

try:
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
except ImportError as e:                                   # no rclpy / messages in this environment
    pytest.skip(f"rclpy or ROS messages not importable: {e}", allow_module_level=True)

import torch  # noqa: E402
from test_node import (CAM_FRAME, WAIT_S, WALL_X, H, K, W, Client, Ros, running_node, wait_for,  # noqa: E402
                       wall_cloud)

from voxmap_ros.config import VoxmapConfig  # noqa: E402
from voxmap_ros.ros import conversions as conv  # noqa: E402
from voxmap_ros.ros.node import VoxmapNode  # noqa: E402

VOXEL = 0.05
RATE_HZ = 10.0
OPTICAL_ALONG_X = [-math.pi / 2, 0.0, -math.pi / 2]     # rpy of the optical frame looking along +x


class RenderClient(Client):
    """test_node's client plus subscriptions to the rendered views."""

    def __init__(self, ctx, ns: str, node_name: str):
        super().__init__(ctx, ns, node_name)
        self.render: dict[str, list] = {"depth": [], "color": [], "camera_info": []}
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        for key, typ in (("depth", Image), ("color", Image), ("camera_info", CameraInfo)):
            self.node.create_subscription(typ, f"{self.base}/render/{key}", self._keep_render(key), qos)

    def _keep_render(self, key: str):
        def cb(msg):
            with self.lock:
                store = self.render[key]
                store.append((time.monotonic(), msg))
                del store[:-10]
        return cb

    def render_count(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.render.values())

    def render_set_after(self, t: float, pred=None):
        """(depth, color, camera_info) of one render received after monotonic time `t` (same stamp
        and frame in all three), whose messages satisfy `pred(depth, color, info)`."""
        def get():
            with self.lock:
                infos = [m for ts, m in self.render["camera_info"] if ts > t]
                depths = [m for ts, m in self.render["depth"] if ts > t]
                colors = [m for ts, m in self.render["color"] if ts > t]
            for info in reversed(infos):
                key = (info.header.stamp.sec, info.header.stamp.nanosec, info.header.frame_id)
                d = [m for m in depths if (m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id) == key]
                c = [m for m in colors if (m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id) == key]
                if d and c and (pred is None or pred(d[-1], c[-1], info)):
                    return d[-1], c[-1], info
            return None
        return wait_for(get, WAIT_S, "a rendered depth + colour + camera_info set")


@pytest.fixture(scope="module")
def ros(tmp_path_factory):
    old_range = os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE")
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    domain_id = random.SystemRandom().randint(1, 200)
    ns = "/voxmap_render_test_" + uuid.uuid4().hex[:8]
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = VoxmapConfig()
    cfg.map.backend = "torch"
    cfg.map.voxel_size_m = VOXEL
    cfg.map.initial_bricks = 256
    n = cfg.node
    n.pose_source, n.pose_topic_type, n.sensor_qos = "topic", "TransformStamped", "reliable"
    n.mesh_rate_hz = n.occupancy_rate_hz = n.occupied_voxels_rate_hz = n.prune_rate_hz = 0.0
    n.diagnostics_rate_hz = 10.0
    n.output_dir = str(tmp_path_factory.mktemp("voxmap_render_out"))
    cfg.render.rate_hz = 0.0
    cfg.validate()
    with running_node(cfg, domain_id, ns, RenderClient,
                      lambda node: (node.pub_render_depth, node.pub_render_color, node.pub_render_info,
                                    node.pub_diag)) as (node, client):
        yield Ros(node, client, None)
    torch.set_num_threads(torch_threads)
    if old_range is None:
        os.environ.pop("ROS_AUTOMATIC_DISCOVERY_RANGE", None)
    else:
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = old_range


def _diag_cycles(ros, n: int = 5) -> dict:
    """Wait for n diagnostics messages (10 Hz): time for several render-timer ticks to pass."""
    values = None
    for _ in range(n):
        values = ros.client.diag_after(time.monotonic())
    return values


def _image(msg: Image) -> np.ndarray:
    return conv.image_msg_to_numpy(msg)


def _centre_depth(depth: np.ndarray) -> float:
    h, w = depth.shape
    return float(np.nanmedian(depth[h // 2 - 2:h // 2 + 3, w // 2 - 2:w // 2 + 3]))


# ============================================================================ tests (in order)
def test_rate_zero_publishes_nothing(ros):
    node, c = ros.node, ros.client
    assert node.cfg.render.rate_hz == 0.0 and node.job_period_s("render") is None
    assert node.get_parameter("render.rate_hz").value == 0.0
    assert not node.describe_parameter("render.rate_hz").read_only
    n = ros.count("integrated_lidar")                 # a map, from LiDAR only: no camera yet
    stamp = c.stamp()
    c.poses_around(stamp)
    c.cloud(stamp, wall_cloud())
    ros.wait_count("integrated_lidar", n + 1)
    values = _diag_cycles(ros)
    assert c.render_count() == 0
    assert int(values["renders"]) == 0 and float(values["render_ms"]) == 0.0


def test_no_camera_yet_skips_quietly(ros):
    """'latest_camera' before any RGB-D frame: no camera to draw from -- no message, no error."""
    node, c = ros.node, ros.client
    assert node._camera is None and node.mapper.summary()["voxels"] > 0
    errors = ros.count("errors")
    r = c.set_param("render.rate_hz", RATE_HZ)         # off -> on at run time
    assert r.successful, r.reason
    assert node.cfg.render.rate_hz == RATE_HZ
    assert node.job_period_s("render") is not None
    assert node.job_period_s("render") == 1.0 / RATE_HZ
    _diag_cycles(ros)
    assert c.render_count() == 0 and ros.count("renders") == 0
    assert ros.count("errors") == errors


def test_latest_camera_view(ros):
    node, c = ros.node, ros.client
    t = time.monotonic()
    stamp = ros.feed_wall()
    stamp = ros.feed_wall()
    depth_msg, color_msg, info = c.render_set_after(
        t, lambda d, col, i: conv.stamp_to_ns(i.header.stamp) == stamp)
    for m in (depth_msg, color_msg, info):
        assert m.header.frame_id == CAM_FRAME                      # the depth image's frame
        assert conv.stamp_to_ns(m.header.stamp) == stamp           # the latest integrated frame
    assert depth_msg.encoding == "32FC1" and color_msg.encoding == "rgb8"
    assert (depth_msg.width, depth_msg.height) == (color_msg.width, color_msg.height) == (W, H)
    assert (info.width, info.height) == (W, H)                      # 160x120 fits in 320x240: not scaled
    np.testing.assert_allclose(np.asarray(info.k).reshape(3, 3), K)
    depth, rgb = _image(depth_msg), _image(color_msg)
    assert depth.shape == (H, W) and rgb.shape == (H, W, 3)
    assert abs(_centre_depth(depth) - WALL_X) < VOXEL / 2, _centre_depth(depth)
    valid = np.isfinite(depth)
    assert valid.mean() > 0.8                                      # the wall fills the view
    assert np.all(np.abs(depth[valid] - WALL_X) < 2 * VOXEL)
    assert np.all(rgb[~valid] == 0)
    # Colour: the map's (the red wall, blue = column index, darkened where the LiDAR's colourless
    # observations weigh in), as the occupied voxels about the centre ray's hit (2, 0, 1) carry it.
    with node._lock:
        pts, cols = node.mapper.occupied_points(0)
    near = np.linalg.norm(pts - np.array([WALL_X, 0.0, 1.0]), axis=1) < 1.5 * VOXEL
    assert near.any()
    want = cols[near].astype(float).mean(0)
    centre = rgb[H // 2 - 1:H // 2 + 2, W // 2 - 1:W // 2 + 2].reshape(-1, 3).astype(float).mean(0)
    assert np.all(np.abs(centre - want) < 25), (centre, want)
    assert centre[0] > 80 and centre[1] < 10
    values = c.diag_after(time.monotonic(), lambda v: int(v["renders"]) >= 1)
    assert float(values["render_ms"]) > 0 and float(values["render_lock_ms"]) >= 0
    assert float(values["render_lock_ms"]) <= float(values["render_ms"])


def test_camera_view_is_scaled_to_fit(ros):
    node, c = ros.node, ros.client
    for name, value in (("render.width", 80), ("render.height", 80)):
        assert c.set_param(name, value).successful
    t = time.monotonic()
    _, _, info = c.render_set_after(t, lambda d, col, i: i.width == 80)
    assert (info.width, info.height) == (80, 60)
    k = np.asarray(info.k).reshape(3, 3)
    np.testing.assert_allclose(k[0, 0], K[0, 0] / 2)
    np.testing.assert_allclose(k[0, 2], (K[0, 2] + 0.5) / 2 - 0.5)
    depth_msg, _, _ = c.render_set_after(t, lambda d, col, i: d.width == 80)
    assert abs(_centre_depth(_image(depth_msg)) - WALL_X) < VOXEL / 2


def test_fixed_view(ros):
    node, c = ros.node, ros.client
    pose = [0.0, 0.0, 1.0] + OPTICAL_ALONG_X                         # where the camera stood
    for name, value in (("render.fixed_pose", pose), ("render.fixed_hfov_deg", 90.0), ("render.width", 200),
                        ("render.height", 100), ("render.viewpoint", "fixed")):
        r = c.set_param(name, value)
        assert r.successful, (name, r.reason)
    r = c.set_param("render.viewpoint", "somewhere")                  # not one of the choices
    assert not r.successful and "viewpoint" in r.reason
    r = c.set_param("render.near_m", 50.0)                            # beyond render.far_m
    assert not r.successful and "far_m" in r.reason
    t = time.monotonic()
    depth_msg, color_msg, info = c.render_set_after(
        t, lambda d, col, i: i.header.frame_id == "voxmap_render_camera" and i.width == 200)
    for m in (depth_msg, color_msg, info):
        assert m.header.frame_id == node.cfg.render.fixed_frame_id == "voxmap_render_camera"
        assert conv.stamp_to_ns(m.header.stamp) == node._last_integrated_stamp_ns
    assert (depth_msg.width, depth_msg.height, color_msg.width, color_msg.height) == (200, 100, 200, 100)
    k = np.asarray(info.k).reshape(3, 3)
    np.testing.assert_allclose(k[0, 0], 100.0)                        # 90 deg over 200 px
    np.testing.assert_allclose(k[1, 1], 100.0)
    np.testing.assert_allclose(k[:2, 2], [99.5, 49.5])
    depth = _image(depth_msg)
    assert abs(_centre_depth(depth) - WALL_X) < VOXEL / 2, _centre_depth(depth)
    # The wall (|y| <= 1.33 m seen) ends inside the 90 degree view (|y| <= 2 m at 2 m): empty sides.
    assert np.isnan(depth[:, :5]).all() and np.isnan(depth[:, -5:]).all()
    # Looking away from the wall: nothing to draw, all NaN.
    assert c.set_param("render.fixed_pose", [0.0, 0.0, 1.0, -math.pi / 2, 0.0, math.pi / 2]).successful
    t = time.monotonic()
    depth_msg, _, _ = c.render_set_after(t, lambda d, col, i: bool(np.isnan(_image(d)).all()))
    assert depth_msg.width == 200


def test_rate_back_to_zero_stops(ros):
    node, c = ros.node, ros.client
    assert c.set_param("render.rate_hz", 0.0).successful
    assert node.job_period_s("render") is None
    # A render in flight may still land, and on a busy machine its messages can reach the client
    # over DDS later still: wait until nothing has arrived for 5 render periods (a node still
    # rendering would keep the count moving until the deadline and fail below).
    n, quiet_since, deadline = c.render_count(), time.monotonic(), time.monotonic() + 10.0
    while time.monotonic() - quiet_since < 5.0 / RATE_HZ and time.monotonic() < deadline:
        time.sleep(0.05)
        if c.render_count() != n:
            n, quiet_since = c.render_count(), time.monotonic()
    renders = ros.count("renders")
    _diag_cycles(ros)
    assert c.render_count() == n and ros.count("renders") == renders
    assert ros.count("errors") == 0
    assert node._worker.is_alive()
