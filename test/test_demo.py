"""`make demo` end to end, smaller: a generated bag played into the node process over DDS."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("open3d")

from voxmap_ros.ros.demo import run_ros_demo  # noqa: E402

MIN_FSCORE = 0.5
MIN_INTEGRATED_FRACTION = 0.8          # at tau 5 cm on a 20-frame trajectory (the full demo reaches ~0.79)


def _node_processes() -> list[str]:
    out = subprocess.run(["pgrep", "-af", "voxmap_ros.ros.node import main|voxmap_ros.ros.bag_player"],
                         capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if "pgrep" not in ln]


def test_ros_demo_fuses_every_frame_and_leaves_no_process(tmp_path, capsys):
    before = _node_processes()
    assert run_ros_demo(tmp_path, seed=1, n_frames=20, n_scans=6) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    diag = {k: float(v) for k, v in summary["diagnostics"].items() if v.replace(".", "", 1).isdigit()}
    for kind, n in (("rgbd", 20), ("lidar", 6)):
        assert diag[f"received_{kind}"] == n, f"the bag player delivered every message; demo said:\n{printed}"
        # Every frame is accounted for; how many the node keeps up with is the benchmarks' business
        # (docs/BENCHMARKS.md), but a 20-frame bag at 30 Hz must be nearly all integrated.
        lost = sum(v for k, v in diag.items() if k.endswith(f"_{kind}") and k.startswith(("dropped_", "bad_")))
        assert diag[f"integrated_{kind}"] + lost == n
        assert diag[f"integrated_{kind}"] >= MIN_INTEGRATED_FRACTION * n
    assert summary["mesh_metrics"]["fscore"] > MIN_FSCORE
    for key in ("mesh", "occupancy_pgm", "occupancy_yaml", "map"):
        assert Path(summary["outputs"][key]).is_file(), key
    assert "mesh F-score" in printed and "frames dropped" in printed
    assert set(_node_processes()) - set(before) == set(), "the demo's node and player processes are gone"


def test_bag_player_save_map_reports_what_the_node_did(tmp_path):
    """The README's bag recipe: the node with config/bag_replay.yaml, then
    `voxmap_bag_player BAG --save-map` waits for the node, saves and prints the frame counts."""
    import sys

    from voxmap_ros.ros.demo import _ros_env, _stop, node_command
    from voxmap_ros.sim.bag_writer import generate_bag

    bag = tmp_path / "bag"
    generate_bag("indoor", 3, bag, n_frames=12, n_scans=4)
    env = _ros_env()
    node = subprocess.Popen(node_command(tmp_path / "out"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    try:
        player = subprocess.run([sys.executable, "-m", "voxmap_ros.ros.bag_player", str(bag), "--save-map",
                                 "--wait-subscribers-s", "60"], env=env, capture_output=True, text=True,
                                timeout=240)
        assert player.returncode == 0, player.stderr
        out = player.stdout
        assert "frames received       RGB-D 12, LiDAR 4" in out, out
        assert "frames integrated     RGB-D 12, LiDAR 4" in out, out
        mesh = [ln.split()[-1] for ln in out.splitlines() if ln.startswith("mesh ")]
        assert mesh and Path(mesh[0]).is_file() and Path(mesh[0]).parent == tmp_path / "out"
        # A node that is not there: a one-line error, not a hang or a traceback.
        wrong = subprocess.run([sys.executable, "-m", "voxmap_ros.ros.bag_player", str(bag), "--save-map",
                                "--node", "no_such_node", "--wait-subscribers-s", "2"], env=env,
                               capture_output=True, text=True, timeout=120)
        assert wrong.returncode == 2 and "no_such_node" in wrong.stderr and "Traceback" not in wrong.stderr
    finally:
        _stop(node)


def test_bag_player_skips_topics_of_types_it_does_not_play(tmp_path, capsys):
    """Real bags carry /imu, /rosout and the like next to the sensor topics: the player publishes
    the types it knows and names the others once, instead of dying on the first unknown one."""
    import rclpy
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    from voxmap_ros.ros import bag_player
    ts = get_typestore(Stores.ROS2_HUMBLE)
    String = ts.types["std_msgs/msg/String"]
    Point = ts.types["geometry_msgs/msg/PointStamped"]
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    P3 = ts.types["geometry_msgs/msg/Point"]
    Pose, Quat = ts.types["geometry_msgs/msg/Pose"], ts.types["geometry_msgs/msg/Quaternion"]
    PoseStamped = ts.types["geometry_msgs/msg/PoseStamped"]
    bag = tmp_path / "bag"
    with Writer(bag, version=Writer.VERSION_LATEST) as w:
        chatter = w.add_connection("/chatter", "std_msgs/msg/String", typestore=ts)
        clicked = w.add_connection("/clicked_point", "geometry_msgs/msg/PointStamped", typestore=ts)
        pose = w.add_connection("/pose", "geometry_msgs/msg/PoseStamped", typestore=ts)
        for i in range(3):
            w.write(chatter, 10**9 + i, bytes(ts.serialize_cdr(String(data="x"), "std_msgs/msg/String")))
            m = Point(header=Header(stamp=Time(sec=1, nanosec=i), frame_id="map"), point=P3(x=0.0, y=0.0, z=0.0))
            w.write(clicked, 10**9 + i, bytes(ts.serialize_cdr(m, "geometry_msgs/msg/PointStamped")))
            ps = PoseStamped(header=Header(stamp=Time(sec=1, nanosec=i), frame_id="map"),
                             pose=Pose(position=P3(x=0.0, y=0.0, z=0.0), orientation=Quat(x=0.0, y=0.0, z=0.0, w=1.0)))
            w.write(pose, 10**9 + i, bytes(ts.serialize_cdr(ps, "geometry_msgs/msg/PoseStamped")))
    rclpy.init()
    try:
        counts = bag_player.play(bag, wait_subscribers_s=0.0, start_delay_s=0.0)
    finally:
        rclpy.shutdown()
    assert counts == {"/pose": 3}
    err = capsys.readouterr().err
    assert "/chatter" in err and "/clicked_point" in err and err.count("not played") == 1
