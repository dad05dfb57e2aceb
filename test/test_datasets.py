"""Folder datasets: writer -> reader round trips, validation, and the real data when present."""
import json
import time
from pathlib import Path

import numpy as np
import pytest

from voxmap_ros.datasets import LidarFolder, RgbdFolder, open_dataset
from voxmap_ros.sim import (default_intrinsics, generate_dataset, look_at, make_scene, render_rgbd,
                            write_lidar_folder, write_rgbd_folder)
from voxmap_ros.sim.dataset_writer import depth_to_uint16

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
POSE_TOL = 1e-11             # poses.txt holds 13 significant digits
GENERATION_BUDGET_S = 20.0   # 40 frames of 320x240 + 10 scans; a few seconds on 2 cores


def _random_pose(rng) -> np.ndarray:
    return look_at(rng.uniform(-1, 1, 3), rng.uniform(2, 3, 3))


def _rgbd_frames(n=3, seed=0):
    rng = np.random.default_rng(seed)
    scene = make_scene("indoor", seed)
    K = default_intrinsics(64, 48)
    frames = []
    for _ in range(n):
        T = look_at(rng.uniform(-0.5, 0.5, 3) + [0, 0, 1.3], [2.5, 0, 1.0])
        depth, rgb, _ = render_rgbd(scene, K, T, 64, 48, depth_noise=True, rng=rng)
        frames.append((depth, rgb, T))
    return frames, K


def test_rgbd_round_trip(tmp_path):
    frames, K = _rgbd_frames()
    frames[0][0][0, :5] = 0                     # no reading stays no reading
    frames[0][1][:2, :2] = [255, 0, 0]          # pure red survives the BGR conversion
    write_rgbd_folder(tmp_path, frames, K, depth_scale=1000.0, times_s=[0.0, 0.5, 1.25])
    ds = open_dataset(tmp_path)
    assert isinstance(ds, RgbdFolder) and len(ds) == 3
    for i, (depth_m, rgb, T) in enumerate(frames):
        f = ds[i]
        assert f.depth.dtype == np.uint16 and f.depth_scale == 1000.0 and f.frame_id == "camera"
        np.testing.assert_array_equal(f.depth, depth_to_uint16(depth_m, 1000.0))
        np.testing.assert_array_equal(f.rgb, rgb)
        np.testing.assert_allclose(f.T_W_S, T, atol=POSE_TOL)
        np.testing.assert_allclose(f.K, K, atol=POSE_TOL)
        assert f.T_W_S.dtype == np.float64 and f.K.dtype == np.float64
    assert np.all(ds[0].depth[0, :5] == 0) and np.all(ds[0].rgb[0, 0] == [255, 0, 0])
    assert [f.stamp_ns for f in ds] == [0, 500_000_000, 1_250_000_000]
    assert ds[-1].stamp_ns == 1_250_000_000
    with pytest.raises(IndexError):
        ds[3]


def test_rgbd_default_stamps_and_depth_scale(tmp_path):
    frames, K = _rgbd_frames(2)
    write_rgbd_folder(tmp_path, frames, K, depth_scale=5000.0)
    ds = RgbdFolder(tmp_path, depth_scale=5000.0)
    assert [f.stamp_ns for f in ds] == [0, 33_000_000]
    np.testing.assert_array_equal(ds[1].depth, depth_to_uint16(frames[1][0], 5000.0))


def test_lidar_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    scans = [(rng.normal(size=(100 + i, 3)).astype(np.float32), _random_pose(rng)) for i in range(4)]
    write_lidar_folder(tmp_path, scans, [10.0, 10.1, 10.2, 10.3])
    ds = open_dataset(tmp_path)
    assert isinstance(ds, LidarFolder) and len(ds) == 4
    for i, (pts, T) in enumerate(scans):
        f = ds[i]
        assert f.points.dtype == np.float32 and f.points.shape == pts.shape and f.frame_id == "lidar"
        np.testing.assert_array_equal(f.points, pts)
        np.testing.assert_allclose(f.T_W_S, T, atol=POSE_TOL)
        assert f.stamp_ns == round((10.0 + 0.1 * i) * 1e9)
    (tmp_path / "times.txt").unlink()
    assert [f.stamp_ns for f in LidarFolder(tmp_path)] == [0, 100_000_000, 200_000_000, 300_000_000]


def test_validation_errors(tmp_path):
    with pytest.raises(ValueError, match="not a known dataset folder"):
        (tmp_path / "empty").mkdir()
        open_dataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="not a directory"):
        open_dataset(tmp_path / "nope")
    frames, K = _rgbd_frames(2)
    d = write_rgbd_folder(tmp_path / "rgbd", frames, K)
    poses = (d / "poses.txt").read_text().splitlines()
    (d / "poses.txt").write_text(poses[0] + "\n")
    with pytest.raises(ValueError, match="1 poses but depth/ has 2"):
        RgbdFolder(d)
    (d / "poses.txt").write_text("\n".join(" ".join(p.split()[:12]) for p in poses) + "\n")
    with pytest.raises(ValueError, match="expected 16"):
        RgbdFolder(d)
    (d / "poses.txt").write_text("\n".join(poses) + "\n")
    (d / "intrinsics.txt").write_text("1 0 0\n0 1 0\n")
    with pytest.raises(ValueError, match="3x3"):
        RgbdFolder(d)
    rng = np.random.default_rng(0)
    lid = write_lidar_folder(tmp_path / "lidar", [(np.zeros((5, 3)), np.eye(4))] * 3)
    (lid / "poses.txt").write_text("1 0 0 0 0 1 0 0 0 0 1 0\n" * 2)
    with pytest.raises(ValueError, match="2 poses but velodyne/ has 3"):
        LidarFolder(lid)
    (lid / "poses.txt").write_text("1 0 0 0 0 1 0 0 0 0 1 0\n" * 3)
    (lid / "times.txt").write_text("0\n1\n")
    with pytest.raises(ValueError, match="times.txt has 2 times"):
        LidarFolder(lid)
    with pytest.raises(ValueError):
        write_lidar_folder(tmp_path / "bad", [(rng.normal(size=(5, 4)), np.eye(4))])


def test_generate_dataset(tmp_path):
    t0 = time.perf_counter()
    summary = generate_dataset("indoor", 0, tmp_path, n_frames=40, n_scans=10, noise=True)
    assert time.perf_counter() - t0 < GENERATION_BUDGET_S
    rgbd, lidar = open_dataset(tmp_path / "rgbd"), open_dataset(tmp_path / "lidar")
    assert len(rgbd) == 40 and len(lidar) == 10 and summary["n_frames"] == 40
    f = rgbd[5]
    assert f.depth.shape == (240, 320) and f.rgb.shape == (240, 320, 3) and (f.depth > 0).mean() > 0.99
    assert len(lidar[0].points) > 1000
    meta = json.loads((tmp_path / "scene.json").read_text())
    assert meta["kind"] == "indoor" and meta["seed"] == 0 and "wall" in meta["label_names"].values()
    assert (tmp_path / "gt_mesh.ply").stat().st_size > 0
    # A semantic label and an object id per ground-truth triangle, in the PLY's triangle order.
    from voxmap_ros.eval.metrics import load_mesh
    from voxmap_ros.sim.dataset_writer import load_gt_labels
    scene = make_scene("indoor", 0)
    labels, objects = load_gt_labels(tmp_path / meta["triangle_labels"])
    gt = load_mesh(tmp_path / "gt_mesh.ply")
    assert len(labels) == len(objects) == len(gt.triangles) == len(scene)
    assert np.array_equal(labels, scene.labels) and np.array_equal(objects, scene.object_ids)
    assert np.allclose(gt.vertices[gt.triangles], scene.vertices[scene.triangles], atol=1e-5)
    assert {str(v) for v in np.unique(labels)} <= set(meta["label_names"])


def test_generate_dataset_with_a_bad_seed_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        generate_dataset("indoor", -1, tmp_path / "ds", n_frames=1, n_scans=0)
    assert not (tmp_path / "ds").exists()


def test_generating_into_a_previous_dataset_replaces_its_frames(tmp_path):
    """A second run into the same folder with fewer frames and no scans: no frame, pose or scan of
    the first run is left to mix with the new ones. A folder there that it did not write is kept."""
    out = tmp_path / "ds"
    generate_dataset("indoor", 0, out, n_frames=4, n_scans=2, width=32, height=24)
    generate_dataset("outdoor", 1, out, n_frames=2, n_scans=0, width=32, height=24)
    ds = open_dataset(out / "rgbd")
    assert len(ds) == 2 and len(list((out / "rgbd" / "color").iterdir())) == 2
    assert not (out / "lidar").exists()
    (out / "lidar").mkdir()
    (out / "lidar" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a dataset folder a previous run wrote"):
        generate_dataset("indoor", 0, out, n_frames=1, n_scans=1, width=32, height=24)
    assert (out / "lidar" / "notes.txt").read_text() == "mine" and len(open_dataset(out / "rgbd")) == 2


@pytest.mark.skipif(not (DATA / "7scenes-redkitchen").is_dir(), reason="shared data not present")
def test_real_7scenes():
    ds = open_dataset(DATA / "7scenes-redkitchen")
    assert isinstance(ds, RgbdFolder) and len(ds) == 300
    f = ds[0]
    assert f.depth.shape == (480, 640) and f.depth.dtype == np.uint16
    assert f.rgb.shape == (480, 640, 3) and f.rgb.dtype == np.uint8
    assert f.K[0, 0] == 585 and f.K[0, 2] == 320
    assert not np.any(f.depth == 65535)
    valid_m = f.depth[f.depth > 0] / f.depth_scale
    assert 0.3 < np.median(valid_m) < 5.0
    R = f.T_W_S[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-3)   # the dataset's rotations are orthonormal to ~1e-4
    assert ds[299].stamp_ns == 299 * 33_000_000


@pytest.mark.skipif(not (DATA / "livox-hku-mainbuilding").is_dir(), reason="shared data not present")
def test_real_livox():
    ds = open_dataset(DATA / "livox-hku-mainbuilding")
    assert isinstance(ds, LidarFolder) and len(ds) == 200
    f = ds[0]
    assert f.points.dtype == np.float32 and f.points.shape[1] == 3 and 1000 < len(f.points) < 20000
    r = np.linalg.norm(f.points, axis=1)
    assert 1.0 < np.median(r) < 40.0
    stamps = [ds[i].stamp_ns for i in range(0, 200, 50)]
    assert stamps == sorted(stamps) and stamps[0] == round(19.299742095 * 1e9)


def test_truncated_scans_and_bad_times_are_named(tmp_path):
    lid = write_lidar_folder(tmp_path / "lidar", [(np.ones((5, 3)), np.eye(4))] * 3)
    scan = sorted((lid / "velodyne").glob("*.bin"))[1]
    scan.write_bytes(scan.read_bytes()[:-3])                  # not whole float32 rows any more
    ds = LidarFolder(lid)
    assert ds[0].points.shape == (5, 3)
    with pytest.raises(ValueError, match="multiple of 16"):
        ds[1]
    for text, words in (("0\na\n1\n", "could not parse"), ("0\nnan\n1\n", "line 2 is not a finite")):
        (lid / "times.txt").write_text(text)
        with pytest.raises(ValueError, match=words) as info:
            LidarFolder(lid)
        assert "times.txt" in str(info.value)


def test_unpadded_file_numbers_pair_with_the_right_pose(tmp_path):
    """0.png ... 11.png: once sorted as text (10.png second), pairing 10 of 12 frames with another
    frame's pose."""
    import cv2
    n = 12
    (tmp_path / "depth").mkdir()
    (tmp_path / "color").mkdir()
    for i in range(n):
        cv2.imwrite(str(tmp_path / "depth" / f"{i}.png"), np.full((4, 4), 1000 + i, np.uint16))
        cv2.imwrite(str(tmp_path / "color" / f"{i}.png"), np.full((4, 4, 3), i, np.uint8))
    np.savetxt(tmp_path / "intrinsics.txt", np.array([[2, 0, 2], [0, 2, 2], [0, 0, 1.0]]))
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, 0, 3] = np.arange(n)
    np.savetxt(tmp_path / "poses.txt", poses.reshape(n, 16))
    ds = RgbdFolder(tmp_path)
    for i in range(n):
        f = ds[i]
        assert int(f.depth[0, 0]) - 1000 == i == int(f.T_W_S[0, 3]) == int(f.rgb[0, 0, 0])


def test_one_pose_with_a_bad_bottom_row_refuses_that_frame_only(tmp_path):
    """Like a NaN pose, one 4x4 whose last row is not 0 0 0 1 is one bad frame (named by its line
    in the file, counted from 1 with comments); most rows bad is another layout: the file fails."""
    frames, K = _rgbd_frames(3)
    d = write_rgbd_folder(tmp_path / "rgbd", frames, K)
    rows = (d / "poses.txt").read_text().splitlines()
    bad = rows[2].split()[:15] + ["1.5"]
    (d / "poses.txt").write_text("# T_W_C, row-major\n" + "\n".join(rows[:2] + [" ".join(bad)]) + "\n")
    ds = RgbdFolder(d)
    assert len(ds) == 3 and ds[0].depth is not None and ds[1].depth is not None
    with pytest.raises(ValueError, match=r"line 4 \(pose 2\) is not a 4x4 rigid transform"):
        ds[2]
    flat = [p.split() for p in rows]
    transposed = [" ".join(np.array(p, float).reshape(4, 4).T.ravel().astype(str)) for p in flat]
    (d / "poses.txt").write_text("\n".join(transposed) + "\n")
    with pytest.raises(ValueError, match="3 of 3 poses are not row-major"):
        RgbdFolder(d)


def test_colour_jpeg_pixels_are_read_as_stored_whatever_their_exif_orientation(tmp_path):
    import cv2
    frames, K = _rgbd_frames(1)
    d = write_rgbd_folder(tmp_path / "rgbd", frames, K)
    rgb = frames[0][1].copy()
    rgb[:8] = [255, 0, 0]                                   # a red top band
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    # APP1 Exif segment: big-endian TIFF, one IFD entry, Orientation (0x0112) = 3 (rotate 180).
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x03\x00\x00" + b"\x00" * 4
    app1 = b"Exif\x00\x00" + tiff
    data = jpg.tobytes()
    data = data[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + data[2:]
    for p in (d / "color").iterdir():
        p.unlink()
    (d / "color" / "000000.jpg").write_bytes(data)
    got = RgbdFolder(d)[0].rgb
    assert got[:8, :, 0].mean() > 200 and got[-8:, :, 0].mean() < got[:8, :, 0].mean() - 50
