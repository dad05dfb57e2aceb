"""`voxmap replay --render-every N`: rendered depth / colour PNGs, side-by-side pictures and the
depth error in summary.json, on a tiny simulated room (8 RGB-D frames of 160x120, 2 LiDAR scans)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from voxmap_ros import cli
from voxmap_ros.config import VoxmapConfig
from voxmap_ros.datasets.folder import open_dataset
from voxmap_ros.sim.dataset_writer import generate_dataset

pytestmark = pytest.mark.usefixtures("single_thread")

N_FRAMES, EVERY, COMPARE = 8, 2, 3
IMG_W, IMG_H = 160, 120
VOXEL_M = VoxmapConfig().map.voxel_size_m


@pytest.fixture(scope="module")
def replayed(tmp_path_factory, single_thread):
    root = tmp_path_factory.mktemp("replay_render")
    generate_dataset("indoor", 0, root / "D", n_frames=N_FRAMES, n_scans=2, width=IMG_W, height=IMG_H)
    out = root / "O"
    assert cli.main(["replay", str(root / "D" / "rgbd"), "--out", str(out), "--render-every", str(EVERY),
                     "--quiet"]) == 0
    return root, out


def test_rendered_pngs_match_the_inputs(replayed):
    root, out = replayed
    ds = open_dataset(root / "D" / "rgbd")
    rendered = list(range(0, N_FRAMES, EVERY))
    for i in range(N_FRAMES):
        depth_p, color_p = out / "render" / f"{i:06d}_depth.png", out / "render" / f"{i:06d}_color.png"
        assert depth_p.is_file() == color_p.is_file() == (i in rendered), i
        if i not in rendered:
            continue
        frame = ds[i]
        d = cv2.imread(str(depth_p), cv2.IMREAD_UNCHANGED)
        c = cv2.imread(str(color_p), cv2.IMREAD_UNCHANGED)
        assert d.dtype == np.uint16 and d.shape == frame.depth.shape == (IMG_H, IMG_W)
        assert c.dtype == np.uint8 and c.shape == (IMG_H, IMG_W, 3)
        # uint16 millimetres, close to the input depth (also millimetres) where both have one.
        both = (d > 0) & (frame.depth > 0)
        assert both.mean() > 0.8
        err_m = np.abs(d[both].astype(float) - frame.depth[both].astype(float)) / 1000.0
        assert np.median(err_m) < 2 * VOXEL_M
        assert np.all(c[d == 0] == 0)                                    # nothing drawn: black
        rgb = cv2.cvtColor(c, cv2.COLOR_BGR2RGB).astype(float)
        assert np.median(np.abs(rgb[both] - frame.rgb[both].astype(float))) < 40


def test_compare_pictures_for_the_first_rendered_frames(replayed):
    _, out = replayed
    pics = sorted((out / "render").glob("*_compare.png"))
    assert [p.name for p in pics] == [f"{i:06d}_compare.png" for i in range(0, N_FRAMES, EVERY)[:COMPARE]]
    for p in pics:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        assert img.shape[1] == 3 * IMG_W + 2 * 2                        # input | rendered | error
        assert IMG_H < img.shape[0] <= IMG_H + 32                       # plus a caption bar
        assert img.std() > 10


def test_summary_reports_the_depth_error(replayed):
    _, out = replayed
    s = json.loads((out / "summary.json").read_text())
    r = s["render"]
    assert r["every"] == EVERY and r["rendered_frames"] == len(range(0, N_FRAMES, EVERY))
    assert r["frames"] == list(range(0, N_FRAMES, EVERY))
    assert len(r["compare_pictures"]) == COMPARE
    assert 0 < r["depth_abs_error_median_m"] < 2 * VOXEL_M, r
    assert r["depth_abs_error_median_m"] <= r["depth_abs_error_p90_m"]
    assert r["depth_compared_pixels"] > 0.8 * r["rendered_frames"] * IMG_W * IMG_H
    assert 0.8 < r["coverage"] <= 1.0
    assert r["ms_per_render_median"] > 0
    print(f"\nreplay render: median |depth error| {r['depth_abs_error_median_m'] * 1000:.1f} mm, "
          f"p90 {r['depth_abs_error_p90_m'] * 1000:.1f} mm, coverage {r['coverage']:.3f}, "
          f"{r['ms_per_render_median']:.0f} ms per render")


def test_lidar_only_source_renders_nothing_and_says_so(replayed, capsys, caplog):
    root, _ = replayed
    out = root / "O_lidar"
    assert cli.main(["replay", str(root / "D" / "lidar"), "--out", str(out), "--render-every", "1",
                     "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["render"]["rendered_frames"] == 0 and "no RGB-D" in s["render"]["note"]
    assert not (out / "render").exists() or not any((out / "render").iterdir())
    assert "no RGB-D" in capsys.readouterr().out
    assert any("no RGB-D" in r.getMessage() for r in caplog.records)


def test_render_every_off_and_invalid(replayed, capsys):
    root, _ = replayed
    out = root / "O_off"
    assert cli.main(["replay", str(root / "D" / "rgbd"), "--out", str(out), "--max-frames", "2", "--quiet"]) == 0
    assert "render" not in json.loads((out / "summary.json").read_text())
    assert not (out / "render").exists()
    assert cli.main(["replay", str(root / "D" / "rgbd"), "--out", str(root / "O_bad"), "--render-every", "-1",
                     "--quiet"]) == 2
    assert "--render-every" in capsys.readouterr().err


def test_a_rejected_frame_does_not_shift_the_rendered_frames(replayed, tmp_path):
    """Renders stay at RGB-D frames 0, N, 2N, ... of the source when a frame in between is refused."""
    import shutil
    root, _ = replayed
    src = tmp_path / "rgbd"
    shutil.copytree(root / "D" / "rgbd", src)
    rows = (src / "poses.txt").read_text().splitlines()
    rows[1] = " ".join(["nan"] + rows[1].split()[1:])
    (src / "poses.txt").write_text("\n".join(rows) + "\n")
    out = tmp_path / "O"
    assert cli.main(["replay", str(src), "--out", str(out), "--render-every", str(EVERY), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_rejected"] == 1
    assert sorted(p.name for p in (out / "render").glob("*_depth.png")) == \
        [f"{i:06d}_depth.png" for i in range(0, N_FRAMES, EVERY)]


@pytest.mark.parametrize("case", ["float_rgb", "rgb_size", "depth_size"])
def test_compare_picture_refuses_images_that_do_not_fit(tmp_path, case):
    from voxmap_ros.outputs import RenderedView, View, compare_picture
    h, w = 6, 8
    view = View(np.array([[8.0, 0, 4], [0, 8.0, 3], [0, 0, 1]]), np.eye(4), w, h)
    rv = RenderedView(np.ones((h, w), np.float32), np.zeros((h, w, 3), np.uint8), np.ones((h, w), np.float32), view)
    rgb, depth = np.zeros((h, w, 3), np.uint8), np.ones((h, w))
    compare_picture(rgb, depth, rv, tmp_path / "ok.png", err_max_m=0.1)
    if case == "float_rgb":          # 0..1 floats once cast to a black picture without a word
        rgb = np.full((h, w, 3), 0.5)
    elif case == "rgb_size":
        rgb = rgb[:, :-1]
    else:
        depth = depth[:-1]
    with pytest.raises(ValueError):
        compare_picture(rgb, depth, rv, tmp_path / "bad.png", err_max_m=0.1)
    assert not (tmp_path / "bad.png").exists()
