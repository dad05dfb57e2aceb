"""Smoke test of `voxmap bench accuracy` on a small simulated run (a few seconds on 2 cores)."""
import json
import math

import pytest

pytest.importorskip("open3d")

from voxmap_ros.bench import accuracy  # noqa: E402
from voxmap_ros.cli import main as cli_main  # noqa: E402

FRAMES = 12
VOXEL_M = 0.04
TAU_M = 0.05
MESH_SAMPLES = 20_000
METRICS = ("accuracy_m", "completeness_m", "chamfer_m", "precision", "recall", "fscore",
           "recall_visible", "fscore_visible")


def _run(tmp_path, *extra):
    out = tmp_path / "accuracy.json"
    rc = cli_main(["bench", "accuracy", "--frames", str(FRAMES), "--width", "160", "--height", "120",
                   "--voxel-sizes-m", str(VOXEL_M), "--noise", "none,kinect", "--tau-m", str(TAU_M),
                   "--trunc-vox", "4", "--mesh-samples", str(MESH_SAMPLES), "--peers", "open3d",
                   "--workdir", str(tmp_path / "work"), "--quiet", "--json", str(out), *extra])
    assert rc == 0
    return json.loads(out.read_text())


def test_bench_accuracy_smoke(tmp_path, capsys):
    d = _run(tmp_path)
    assert isinstance(d["command"], str) and d["command"]          # this process's own command line
    assert d["equivalent_command"].startswith("voxmap bench accuracy")
    assert {"cpu_model", "cores", "torch_threads", "open3d"} <= set(d["machine"])
    assert [(c["voxel_size_m"], c["noise"]) for c in d["cases"]] == [(VOXEL_M, "none"), (VOXEL_M, "kinect")]
    for c in d["cases"]:
        assert c["frames"] == FRAMES and c["trunc_m"] == pytest.approx(4 * VOXEL_M)
        assert 0 < c["gt_visible_fraction"] < 1
        for name in ("voxmap", "open3d_vbg"):
            r = c[name]
            for k in METRICS:
                assert isinstance(r[k], float) and math.isfinite(r[k]), (name, k)
            for k in ("precision", "recall", "fscore", "recall_visible", "fscore_visible"):
                assert 0.0 <= r[k] <= 1.0, (name, k)
            assert r["mesh_triangles"] > 0 and r["tau_m"] == TAU_M
            assert r["recall_visible"] >= r["recall"]          # the seen part is the easier part
        # fusion + meshing really worked: the room is reconstructed where it was seen
        assert c["voxmap"]["fscore"] > 0.5
        assert c["voxmap"]["fscore_visible"] > 0.9
        assert c["voxmap_fscore_minus_open3d"] == pytest.approx(c["voxmap"]["fscore"] - c["open3d_vbg"]["fscore"])
    assert d["all_voxmap_ge_open3d"] == all(c["voxmap_fscore_minus_open3d"] >= 0 for c in d["cases"])
    assert d["datasets"]["none"]["reused"] is False
    out = capsys.readouterr().out
    assert "Mesh accuracy vs ground truth" in out and "open3d_vbg" in out

    # A second run reuses the generated frames from --workdir and gives the same voxmap numbers.
    d2 = _run(tmp_path, "--noise", "none")
    assert d2["datasets"]["none"]["reused"] is True
    assert d2["cases"][0]["voxmap"]["fscore"] == pytest.approx(d["cases"][0]["voxmap"]["fscore"])


def test_bench_accuracy_grid_shift(tmp_path):
    d = _run(tmp_path, "--noise", "none", "--grid-shifts-vox", "0,0.5", "--peers", "none")
    assert [c["grid_shift_vox"] for c in d["cases"]] == [0.0, 0.5]
    for c in d["cases"]:
        assert "open3d_vbg" not in c and c["voxmap"]["fscore"] > 0.5
    assert d["all_voxmap_ge_open3d"] is None
    assert [m["voxel_size_m"] for m in d["grid_shift_means"]] == [VOXEL_M]


def test_option_parsing():
    assert accuracy.parse_floats("0.01, 0.02,0.01", "x") == [0.01, 0.02]
    assert accuracy.parse_noise("kinect,none") == ["kinect", "none"]
    assert accuracy.parse_peers("open3d,none") == ["open3d_vbg"]
    assert accuracy.parse_shifts("0,0.5") == [0.0, 0.5]
    for bad in (lambda: accuracy.parse_floats("0,-1", "x"), lambda: accuracy.parse_noise("gauss"),
                lambda: accuracy.parse_peers("octomap"), lambda: accuracy.parse_shifts("1.5")):
        with pytest.raises(ValueError):
            bad()
