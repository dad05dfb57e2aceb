"""`voxmap bench node` end to end on a small generated dataset (node process over DDS)."""
from __future__ import annotations

import argparse
import json

import pytest

pytest.importorskip("rclpy")

from voxmap_ros.bench import node as bench_node  # noqa: E402
from voxmap_ros.sim.dataset_writer import generate_dataset  # noqa: E402

FRAMES, SCANS, RATE_HZ = 12, 6, 5.0


def test_bench_node_counts_every_frame_at_a_low_rate(tmp_path):
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
        assert run["received"] == n, run
        # Far below what the node can do: every frame is integrated, none dropped.
        assert run["integrated"] == n and run["dropped_total"] == 0 and run["keeps_up"], run
        assert run["latency_map_ms_median"] > 0 and run["ms_per_frame_median"] > 0
    assert rgbd["mesh_messages"] >= 1 and rgbd["latency_mesh_ms_median"] > 0


def test_bench_node_rejects_bad_rates():
    p = argparse.ArgumentParser()
    bench_node.add_arguments(p)
    with pytest.raises(ValueError, match="rates"):
        bench_node.run(p.parse_args(["--data", "x", "--rates-hz", "0"]))
