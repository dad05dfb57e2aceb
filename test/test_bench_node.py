"""`voxmap bench node` end to end on a small generated dataset (node process over DDS)."""
from __future__ import annotations

import argparse
import json

import pytest

pytest.importorskip("rclpy")

from voxmap_ros.ros import bench_node  # noqa: E402
from voxmap_ros.sim.dataset_writer import generate_dataset  # noqa: E402

FRAMES, SCANS, RATE_HZ = 12, 6, 5.0


def test_bench_node_accounts_for_every_frame(tmp_path):
    """The benchmark's bookkeeping, not the node's speed (speed lives in docs/BENCHMARKS.md):
    every frame sent is received or missing, every frame received is integrated or counted as
    dropped, and the figures are filled in."""
    generate_dataset("indoor", 3, tmp_path / "data", n_frames=FRAMES, n_scans=SCANS, width=160, height=120)
    p = argparse.ArgumentParser()
    bench_node.add_arguments(p)
    out = tmp_path / "node.json"
    args = p.parse_args(["--data", str(tmp_path / "data" / "rgbd"), "--lidar-data", str(tmp_path / "data" / "lidar"),
                         "--frames", str(FRAMES), "--scans", str(SCANS), "--rates-hz", str(RATE_HZ),
                         "--lidar-rate-hz", str(RATE_HZ), "--voxel-size-m", "0.05", "--json", str(out), "--quiet"])
    assert bench_node.main(args) == 0
    payload = json.loads(out.read_text())
    assert "command" in payload and payload["machine"]["cores"] >= 1
    rgbd, lidar = payload["runs"]
    assert (rgbd["kind"], lidar["kind"]) == ("rgbd", "lidar")
    for run, n in ((rgbd, FRAMES), (lidar, SCANS)):
        assert run["published"] == n
        assert 0 < run["received"] <= n, run
        assert run["integrated"] + run["dropped_total"] == run["received"], run
        assert run["dropped_total"] == sum(run["dropped"].values())
        assert run["keeps_up"] == (run["integrated"] == n and run["dropped_total"] == 0)
        assert run["integrated"] >= 1 and run["latency_map_ms_median"] > 0 and run["ms_per_frame_median"] > 0
    assert rgbd["mesh_messages"] >= 1 and rgbd["latency_mesh_ms_median"] > 0


def test_bench_node_rejects_bad_rates():
    p = argparse.ArgumentParser()
    bench_node.add_arguments(p)
    with pytest.raises(ValueError, match="rates"):
        bench_node.run(p.parse_args(["--data", "x", "--rates-hz", "0"]))


def test_mesh_stamp_is_read_from_serialized_markers():
    from rclpy.serialization import serialize_message
    from visualization_msgs.msg import Marker, MarkerArray
    first, second = Marker(), Marker()
    first.header.stamp.sec, first.header.stamp.nanosec = 1700000000, 123456789
    second.header.stamp.sec = 5
    raw = serialize_message(MarkerArray(markers=[first, second]))
    assert bench_node.mesh_stamp_ns(raw) == 1700000000 * 10**9 + 123456789
    assert bench_node.mesh_stamp_ns(serialize_message(MarkerArray())) is None
    assert bench_node.mesh_stamp_ns(b"\x00\x01") is None
