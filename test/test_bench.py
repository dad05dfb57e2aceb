"""Smoke tests of `voxmap bench rgbd|lidar` on a tiny synthetic dataset (seconds, nothing timed)."""
import json
import math

import numpy as np
import pytest

from voxmap_ros.bench import common
from voxmap_ros.cli import main as cli_main

pytest.importorskip("open3d")

RGBD_FRAMES = 3
LIDAR_SCANS = 3
MESH_SAMPLES = 2000
RGBD_VOXEL_M = 0.04
LIDAR_VOXEL_M = 0.1
LIDAR_MAX_RANGE_M = 20.0


@pytest.fixture(scope="module")
def sim_dataset(tmp_path_factory):
    from voxmap_ros.sim.dataset_writer import generate_dataset
    out = tmp_path_factory.mktemp("bench_sim")
    info = generate_dataset("indoor", 0, out, n_frames=RGBD_FRAMES + 1, n_scans=LIDAR_SCANS + 1, width=80,
                            height=60, lidar_beams=8, lidar_hfov_samples=256)
    return info


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_timing_stats_and_json(tmp_path, monkeypatch):
    s = common.timing_stats([1.0, 2.0, 3.0, 4.0], "ms_per_frame")
    assert s["ms_per_frame_median"] == 2.5 and s["n"] == 4
    assert s["ms_per_frame_min"] <= s["ms_per_frame_p95"] <= s["ms_per_frame_max"]
    assert common.timing_stats([], "ms_per_scan")["ms_per_scan_median"] is None
    assert common.ratio(1.0, 0.0) is None and common.ratio(3.0, 2.0) == 1.5
    p = common.write_json(tmp_path / "sub" / "x.json", {"a": np.float32(1.5), "b": float("nan"),
                                                        "c": np.arange(3)})
    d = json.loads(p.read_text())
    assert d["a"] == 1.5 and d["b"] is None and d["c"] == [0, 1, 2] and isinstance(d["command"], str)
    m = common.machine_info()
    assert m["cores"] >= 1 and m["torch_threads"] >= 1 and m["cpu_model"]
    monkeypatch.setenv("VOXMAP_SPREAD_THREADS", "0")
    monkeypatch.delenv("OMP_PROC_BIND", raising=False)
    env = common.machine_info()["thread_env"]
    assert env["VOXMAP_SPREAD_THREADS"] == "0" and "OMP_PROC_BIND" not in env


def test_flat_cost_windows_on_synthetic_timings():
    """timing_stats' flat-cost check: medians of the first and last 50 items and last / first,
    None with fewer than 100 items (two full windows)."""
    assert common.FLAT_WINDOW == 50                   # the JSON keys say 50
    rng = np.random.default_rng(0)
    # Distinct values: a window one item wider (taking in a 1000) or narrower moves its median by
    # about 1 %, so the exact medians below pin the window to the first / last 50 items.
    first = rng.permutation(np.linspace(0.5, 1.5, 50))        # median 1.0
    middle = np.full(20, 1000.0)                              # in neither window
    last = rng.permutation(np.linspace(1.0, 3.0, 50))         # median 2.0
    last[0] = 1e6                                             # a spike moves a mean, not this median
    s = common.timing_stats(np.concatenate([first, middle, last]).tolist())
    assert s["n"] == 120
    assert s["first50_median"] == pytest.approx(1.0, abs=1e-12)
    assert s["last50_median"] == pytest.approx(float(np.median(last)), abs=1e-12)
    assert s["last50_median"] == pytest.approx(2.0, abs=1e-9)
    assert s["last50_over_first50"] == pytest.approx(s["last50_median"] / s["first50_median"], rel=1e-12)
    # The last 50 exactly 2x the first 50: ratio 2.0.
    exact = [1.0] * 50 + [1000.0] * 20 + [2.0] * 50
    s = common.timing_stats(exact, "ms_per_scan")
    assert (s["first50_median"], s["last50_median"], s["last50_over_first50"]) == (1.0, 2.0, 2.0)
    assert s["ms_per_scan_median"] == 2.0                       # the other statistics keep their prefix
    # A flat run: ratio 1. Two windows exactly (100 items, no overlap) are enough.
    s = common.timing_stats([3.0] * 50 + [6.0] * 50)
    assert (s["first50_median"], s["last50_median"], s["last50_over_first50"]) == (3.0, 6.0, 2.0)
    assert common.timing_stats([4.0] * 100)["last50_over_first50"] == 1.0
    # Fewer than two windows: no check at all (overlapping windows would hide a trend).
    for n in (1, 50, 99):
        s = common.timing_stats([1.0] * (n - n // 2) + [2.0] * (n // 2))
        assert s["n"] == n
        assert (s["first50_median"], s["last50_median"], s["last50_over_first50"]) == (None, None, None), n
    s = common.timing_stats([])
    assert (s["first50_median"], s["last50_median"], s["last50_over_first50"]) == (None, None, None)
    # A first window of zeros has no ratio (division by a non-positive median).
    s = common.timing_stats([0.0] * 50 + [1.0] * 50)
    assert s["first50_median"] == 0.0 and s["last50_median"] == 1.0 and s["last50_over_first50"] is None


def test_bench_rgbd_smoke(sim_dataset, tmp_path, capsys):
    out = tmp_path / "rgbd.json"
    rc = cli_main(["bench", "rgbd", "--data", sim_dataset["rgbd_dir"], "--frames", str(RGBD_FRAMES),
                   "--warmup", "1", "--voxel-size-m", str(RGBD_VOXEL_M), "--trunc-vox", "4",
                   "--max-range-m", "5", "--peers", "open3d", "--mesh-samples", str(MESH_SAMPLES), "--repeat", "2",
                   "--quiet", "--json", str(out)])
    assert rc == 0
    d = json.loads(out.read_text())
    assert "bench rgbd" in d["equivalent_command"] and d["frames"] == RGBD_FRAMES
    assert {"cpu_model", "cores", "torch_threads"} <= set(d["machine"])
    assert set(d["results"]) == {"voxmap", "open3d_vbg", "open3d_scalable"}
    for name, r in d["results"].items():
        assert _positive_finite(r["ms_per_frame_median"]), name
        assert _positive_finite(r["ms_per_frame_p95"]), name
        assert r["ms_per_frame_p95"] >= r["ms_per_frame_median"]
        assert len(r["ms_per_frame"]) == RGBD_FRAMES and len(r["repeat_medians_ms"]) == 2
        assert len(r["repeat_p95_ms"]) == 2 and all(p >= m for p, m in zip(r["repeat_p95_ms"], r["repeat_medians_ms"]))
    for name, r in d["results"].items():               # the spec's size fields, every system
        for k in ("voxels", "map_bytes"):
            assert isinstance(r[k], int) and not isinstance(r[k], bool) and r[k] >= 0, (name, k)
        assert r["backend"], name
    for name in ("voxmap", "open3d_vbg"):
        r = d["results"][name]
        assert _positive_finite(r["voxels"]) and _positive_finite(r["map_bytes"])
        assert not r.get("estimated_fields"), name                  # counted, not estimated
        assert 0 < r["used_bytes"] <= r["capacity_bytes"], name      # like for like: data in use vs reserved
        assert r["mesh_triangles"] > 0
    # ScalableTSDFVolume reports no sizes: both figures are estimates from its voxel point cloud,
    # marked as such, and consistent with the units they are counted from.
    s = d["results"]["open3d_scalable"]
    assert set(s["estimated_fields"]) == {"voxels", "map_bytes"}
    assert "estimate" in s["voxels_note"] and "estimate" in s["map_bytes_note"]
    assert s["voxels"] == s["volume_units"] * s["volume_unit_resolution"] ** 3
    assert s["map_bytes"] == s["voxels"] * s["voxel_bytes"] and s["voxel_bytes"] == 48
    assert 0 <= s["voxels_near_surface"] <= s["voxels"]
    assert (s["volume_units"] > 0) == (s["voxels_near_surface"] > 0)
    if s["valid"]:                     # a build whose volume fuses real surfaces holds some voxels
        assert _positive_finite(s["voxels"]) and _positive_finite(s["map_bytes"])
    assert d["results"]["voxmap"]["backend"] in ("torch", "cpp")
    for k in ("voxmap_over_open3d_vbg_ms", "voxmap_over_open3d_scalable_ms"):
        assert _positive_finite(d["ratios"][k])
    c = d["mesh_crosscheck"]["voxmap_vs_open3d_vbg"]
    assert math.isfinite(c["chamfer_m"]) and c["chamfer_m"] >= 0
    out = capsys.readouterr().out
    assert "RGB-D fusion" in out and "map MiB" in out
    row = next(line for line in out.splitlines() if line.startswith("open3d_scalable"))
    assert "~" in row                                   # the estimated cells are marked in the table
    assert "~ open3d_scalable map_bytes: estimate" in out and "~ open3d_scalable voxels: estimate" in out
    vox_row = next(line for line in out.splitlines() if line.startswith("voxmap "))
    assert "~" not in vox_row


def test_bench_lidar_smoke(sim_dataset, tmp_path, capsys):
    pytest.importorskip("octomap")
    out = tmp_path / "lidar.json"
    rc = cli_main(["bench", "lidar", "--data", sim_dataset["lidar_dir"], "--scans", str(LIDAR_SCANS),
                   "--warmup", "1", "--voxel-size-m", str(LIDAR_VOXEL_M), "--max-range-m", str(LIDAR_MAX_RANGE_M),
                   "--peers", "octomap", "--quiet", "--json", str(out)])
    assert rc == 0
    d = json.loads(out.read_text())
    assert "bench lidar" in d["equivalent_command"] and d["scans"] == LIDAR_SCANS
    assert set(d["results"]) == {"voxmap", "octomap"}
    for name, r in d["results"].items():
        assert _positive_finite(r["ms_per_scan_median"]), name
        assert _positive_finite(r["ms_per_scan_p95"]), name
    assert d["results"]["octomap"]["prob_hit"] == pytest.approx(0.7, abs=1e-6)
    iou = d["occupied_iou_vs_octomap"]
    assert isinstance(iou, float) and 0.0 < iou <= 1.0
    assert d["grid_alignment"]["same_cell"] is True
    assert d["grid_alignment"]["centre_diff_m"] < 1e-5
    assert _positive_finite(d["ratios"]["octomap_over_voxmap_ms"])
    assert d["results"]["octomap"]["process"] == "own process"
    assert "LiDAR fusion" in capsys.readouterr().out


def test_bench_lidar_peer_process_gives_the_same_maps(sim_dataset, tmp_path):
    """OctoMap in its own process (its map read back from its .ot file) and in this process
    must leave the same occupied cells."""
    pytest.importorskip("octomap")
    comps = {}
    for mode in ("own", "same"):
        out = tmp_path / f"lidar_{mode}.json"
        args = ["bench", "lidar", "--data", sim_dataset["lidar_dir"], "--scans", str(LIDAR_SCANS), "--warmup", "0",
                "--voxel-size-m", str(LIDAR_VOXEL_M), "--max-range-m", str(LIDAR_MAX_RANGE_M), "--sequential",
                "--quiet", "--json", str(out)] + (["--same-process"] if mode == "same" else [])
        assert cli_main(args) == 0
        d = json.loads(out.read_text())
        comps[mode] = {k: d["occupied_comparison"][k] for k in ("voxmap_occupied", "octomap_occupied", "both")}
        comps[mode]["leaf_nodes"] = d["results"]["octomap"]["leaf_nodes"]
    assert comps["own"]["octomap_occupied"] > 0
    assert comps["own"] == comps["same"]


def test_bench_lidar_summary_modes_charge_the_deferred_work_and_give_the_same_maps(sim_dataset, tmp_path):
    """--summaries end: both maps defer their inner-node summaries and pay once at the end (timed,
    in the totals); every-scan: inside each timed call. The maps are the same either way."""
    pytest.importorskip("octomap")
    got = {}
    for mode in ("end", "every-scan"):
        out = tmp_path / f"lidar_{mode}.json"
        assert cli_main(["bench", "lidar", "--data", sim_dataset["lidar_dir"], "--scans", str(LIDAR_SCANS),
                         "--warmup", "0", "--voxel-size-m", str(LIDAR_VOXEL_M), "--max-range-m",
                         str(LIDAR_MAX_RANGE_M), "--summaries", mode, "--quiet", "--json", str(out)]) == 0
        got[mode] = d = json.loads(out.read_text())
        assert d["summaries"] == mode
        for r in d["results"].values():
            assert r["total_incl_end_of_run_s"] == pytest.approx(r["total_s"] + r["end_of_run_ms"] / 1000)
        assert _positive_finite(d["ratios"]["octomap_over_voxmap_total"])
    assert got["end"]["results"]["octomap"]["end_of_run_ms"] > 0
    assert got["every-scan"]["results"]["octomap"]["end_of_run_ms"] == 0
    assert "lazy_eval=True" in got["end"]["timed"]["octomap"]
    assert "flush_summaries()" in got["every-scan"]["timed"]["voxmap"]
    keys = ("voxmap_occupied", "octomap_occupied", "both")
    assert {k: got["end"]["occupied_comparison"][k] for k in keys} == \
        {k: got["every-scan"]["occupied_comparison"][k] for k in keys}


def test_peer_process_reports_failures_and_keeps_serving(sim_dataset):
    pytest.importorskip("octomap")
    from voxmap_ros.bench import isolated, lidar
    from voxmap_ros.config import VoxmapConfig
    scans = lidar.load_scans(sim_dataset["lidar_dir"], 2)
    peer = isolated.ProcessSystem(lidar.OctomapSystem(VoxmapConfig()))
    try:
        items = peer.prepare(scans)
        assert items == [0, 1]
        state = peer.make()
        with pytest.raises(isolated.PeerProcessError, match="IndexError"):
            peer.integrate(state, 5)
        assert peer.integrate(state, items[0]) > 0.0          # still serving, timed in its process
        with pytest.raises(isolated.PeerProcessError, match="only the latest map"):
            peer.integrate(state - 1, items[1])
        tree = peer.local(state)
        assert tree.getNumLeafNodes() == peer.finish(state)[0]["leaf_nodes"] > 0
        # A reply that does not come in time: the peer is stopped, later calls fail at once
        # (instead of reading the late reply as the answer to the next request).
        with pytest.raises(isolated.PeerProcessError, match="no answer"):
            peer._call("integrate", items[1], timeout_s=0.0)
        assert not peer._proc.is_alive()
        with pytest.raises(isolated.PeerProcessError, match="earlier failure"):
            peer.make()
    finally:
        peer.close()
    assert not peer._proc.is_alive()


def test_octomap_pruned_leaves_expand_to_voxels():
    """A 2x2x2 block of voxels hit many times collapses into one coarser OctoMap leaf; the
    comparison must count all 8 voxels at the leaf resolution."""
    octomap = pytest.importorskip("octomap")
    from voxmap_ros.bench.lidar import octomap_occupied_cells
    res = 0.1
    t = octomap.OcTree(res)
    centres = np.array([[0.05 + 0.1 * i, 0.05 + 0.1 * j, 0.05 + 0.1 * k]
                        for i in range(2) for j in range(2) for k in range(2)])
    for _ in range(20):
        for c in centres:
            t.updateNode(c, True)
    sizes = {round(it.getSize(), 6) for it in t.begin_leafs()}
    idx = octomap_occupied_cells(t, res)
    assert sorted(map(tuple, idx)) == sorted((i, j, k) for i in range(2) for j in range(2) for k in range(2))
    assert max(sizes) > res       # the block really was pruned into one leaf
