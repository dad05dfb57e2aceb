"""Mesh and depth metrics against analytic cases."""
import numpy as np
import pytest

from voxmap_ros.eval import depth_errors, mesh_metrics, sample_surface
from voxmap_ros.eval.metrics import load_mesh
from voxmap_ros.sim import Scene, make_scene, plane_mesh, write_gt_mesh
from voxmap_ros.types import MeshData

DIST_TOL_M = 1e-5          # float32 point-to-triangle distances on metre-scale meshes
FRACTION_TOL = 0.02        # sampled fractions (precision / recall) with 20k samples
N = 20_000


def _plane(offset_z_m=0.0, size_m=2.0) -> MeshData:
    p = plane_mesh((0, 0, offset_z_m), (size_m, 0, 0), (0, size_m, 0), (200, 200, 200), tile_m=0.5)
    return p.to_mesh_data()


def test_identical_meshes():
    m = _plane()
    r = mesh_metrics(m, m, tau_m=0.01, n_samples=N)
    assert r["accuracy_m"] < DIST_TOL_M and r["completeness_m"] < DIST_TOL_M and r["chamfer_m"] < DIST_TOL_M
    assert r["precision"] == r["recall"] == r["fscore"] == 1.0


def test_plane_shifted_along_normal():
    d_m = 0.05
    r = mesh_metrics(_plane(d_m), _plane(), tau_m=0.01, n_samples=N)
    assert r["accuracy_m"] == pytest.approx(d_m, abs=DIST_TOL_M)
    assert r["completeness_m"] == pytest.approx(d_m, abs=DIST_TOL_M)
    assert r["chamfer_m"] == pytest.approx(d_m, abs=DIST_TOL_M)
    assert r["fscore"] == 0.0
    assert mesh_metrics(_plane(d_m), _plane(), tau_m=0.1, n_samples=N)["fscore"] == 1.0


def test_partial_prediction_lowers_recall_only():
    half = plane_mesh((0, 0, 0), (1, 0, 0), (0, 2, 0), (0, 0, 0)).to_mesh_data()
    r = mesh_metrics(half, _plane(), tau_m=0.01, n_samples=N)
    assert r["precision"] == 1.0
    assert r["recall"] == pytest.approx(0.5, abs=FRACTION_TOL)
    assert r["accuracy_m"] < DIST_TOL_M and r["completeness_m"] > 0.1


def test_empty_prediction():
    r = mesh_metrics(MeshData(), _plane(), tau_m=0.05, n_samples=1000)
    assert r["accuracy_m"] == np.inf and r["completeness_m"] == np.inf
    assert r["precision"] == r["recall"] == r["fscore"] == 0.0
    with pytest.raises(ValueError, match="ground-truth mesh is empty"):
        mesh_metrics(_plane(), MeshData(), tau_m=0.05)
    with pytest.raises(ValueError, match="tau_m"):
        mesh_metrics(_plane(), _plane(), tau_m=0.0)


def test_eval_json_of_an_empty_mesh_is_standard_json(tmp_path):
    """Infinite distances were written as the non-standard `Infinity`, which strict parsers refuse."""
    import json
    import subprocess
    import sys
    empty, gt, out = tmp_path / "empty.ply", tmp_path / "gt.ply", tmp_path / "m.json"
    empty.write_text("ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\n"
                     "property float z\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n")
    import open3d as o3d
    plane = _plane()
    o3d.io.write_triangle_mesh(str(gt), o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(np.asarray(plane.vertices, np.float64)),
        o3d.utility.Vector3iVector(np.asarray(plane.triangles, np.int32))))
    r = subprocess.run([sys.executable, "-m", "voxmap_ros.cli", "eval", "--mesh", str(empty), "--gt", str(gt),
                        "--tau-m", "0.05", "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    m = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert m["accuracy_m"] is None and m["chamfer_m"] is None and m["fscore"] == 0.0
    assert {"accuracy_m", "completeness_m", "chamfer_m", "precision", "recall", "fscore"} <= set(m)


def test_paths_and_scene_object_removal(tmp_path):
    scene = make_scene("indoor", 0)
    gt_path = write_gt_mesh(tmp_path / "gt.ply", scene)
    same = mesh_metrics(gt_path, scene.to_mesh_data(), tau_m=0.01, n_samples=N)
    assert same["chamfer_m"] < DIST_TOL_M and same["fscore"] == 1.0
    missing = mesh_metrics(scene.without_object("cabinet"), gt_path, tau_m=0.01, n_samples=N)
    assert missing["precision"] == 1.0 and missing["recall"] < 1.0


def test_sampling_is_uniform_by_area_and_seeded():
    big = plane_mesh((0, 0, 0), (3, 0, 0), (0, 1, 0), (0, 0, 0), tile_m=10)      # 3 m^2
    small = plane_mesh((0, 0, 1), (1, 0, 0), (0, 1, 0), (0, 0, 0), tile_m=10)    # 1 m^2
    m = Scene.merge([big, small]).to_mesh_data()
    pts = sample_surface(m, N, np.random.default_rng(0))
    assert np.mean(pts[:, 2] > 0.5) == pytest.approx(0.25, abs=FRACTION_TOL)
    np.testing.assert_array_equal(pts, sample_surface(m, N, np.random.default_rng(0)))
    on_big = pts[pts[:, 2] < 0.5]
    assert np.mean(on_big[:, 0] < 1.5) == pytest.approx(0.5, abs=FRACTION_TOL)


def test_depth_errors():
    gt = np.full((4, 5), 2.0, np.float32)
    pred = gt + 0.01
    pred[0, 0] = 0          # no reading: excluded
    gt[1, 1] = np.nan       # invalid ground truth: excluded
    pred[2, 2] += 0.09      # one outlier of 0.1 m
    r = depth_errors(pred, gt)
    assert r["n_valid"] == 18
    assert r["median_abs_m"] == pytest.approx(0.01, abs=1e-6)
    assert r["mean_abs_m"] == pytest.approx((17 * 0.01 + 0.1) / 18, abs=1e-6)
    assert np.isnan(depth_errors(np.zeros((2, 2)), np.ones((2, 2)))["median_abs_m"])
    with pytest.raises(ValueError, match="same shape"):
        depth_errors(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="float metres"):
        depth_errors(np.zeros((2, 2), np.uint16), np.zeros((2, 2), np.uint16))


def test_mesh_files_that_are_not_meshes_are_refused(tmp_path):
    bad_index = tmp_path / "bad_index.ply"
    bad_index.write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                         "property float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n"
                         "0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n")
    with pytest.raises(ValueError, match="triangle indices"):
        load_mesh(bad_index)
    junk = tmp_path / "junk.ply"
    junk.write_bytes(b"\x00\x01 definitely not a mesh")
    with pytest.raises(ValueError, match="could not read a mesh"):
        load_mesh(junk)
    empty = tmp_path / "empty.ply"                # an empty map's mesh is a mesh: F = 0, not an error
    empty.write_text("ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\n"
                     "property float z\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n")
    assert len(load_mesh(empty).vertices) == 0


def test_a_non_finite_vertex_costs_only_its_triangles():
    plane = _plane()
    v = np.asarray(plane.vertices, np.float32).copy()
    v[0] = np.nan
    r = mesh_metrics(MeshData(v, plane.triangles, plane.colors), _plane(), tau_m=0.05, n_samples=N)
    assert r["precision"] == 1.0 and r["recall"] > 0.3
