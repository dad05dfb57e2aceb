"""Occupancy outputs: 2D grid cells of a wall at a known place, map_server PGM+YAML, 3D cells."""
import math

import numpy as np
import pytest
import torch
import yaml

from conftest import SMALL_K, IMG_H, IMG_W, make_config
from voxmap_ros.core import morton, occupancy
from voxmap_ros.core.mapper import Mapper
from voxmap_ros.core.octree import BRICK
from voxmap_ros.sim import look_at, plane_mesh, render_rgbd, scan_lidar
from voxmap_ros.types import Frame

pytestmark = pytest.mark.usefixtures("single_thread")

VOXEL_M = 0.05
WALL_X_M = 2.0
SENSOR_XY_M = (0.0, 0.0)
WALL_CELL_TOL_M = VOXEL_M              # occupied cell centres within one cell of the wall
CHECK_HALF_WIDTH_M = 0.6               # rows within this |y| of the sensor are checked


def _wall():
    return plane_mesh((WALL_X_M, -3.0, -1.0), (0, 0, 4.0), (0, 6.0, 0), (180, 180, 180), tile_m=1.0)


@pytest.fixture(scope="module")
def wall_lidar_map():
    T = np.eye(4)
    T[:3, 3] = [SENSOR_XY_M[0], SENSOR_XY_M[1], 0.8]
    pts = scan_lidar(_wall(), T, beams=16, hfov_samples=1024)
    m = Mapper(make_config(VOXEL_M))
    for _ in range(3):
        m.integrate(Frame(T, points=pts))
    return m


def _cell_centres(g):
    H, W = g.data.shape
    xs = g.origin_xy_m[0] + (np.arange(W) + 0.5) * g.resolution_m
    ys = g.origin_xy_m[1] + (np.arange(H) + 0.5) * g.resolution_m
    return xs, ys


def test_wall_occupied_free_in_front_unknown_behind(wall_lidar_map):
    g = wall_lidar_map.occupancy_grid()
    assert g.resolution_m == VOXEL_M and g.data.dtype == np.int8
    xs, ys = _cell_centres(g)
    rows = np.abs(ys - SENSOR_XY_M[1]) < CHECK_HALF_WIDTH_M
    sub = g.data[rows]
    occ_x = xs[np.nonzero(sub == occupancy.OCCUPIED)[1]]
    assert len(occ_x) >= rows.sum()                             # the wall in every checked row
    assert np.abs(occ_x - WALL_X_M).max() <= WALL_CELL_TOL_M
    for r in np.nonzero(rows)[0]:
        line = g.data[r]
        front = (xs > 0.5) & (xs < WALL_X_M - 2 * VOXEL_M)
        behind = xs > WALL_X_M + 2 * VOXEL_M
        assert (line[front] == occupancy.FREE).all()
        assert (line[behind] == occupancy.UNKNOWN).all()
        assert (line[np.abs(xs - WALL_X_M) <= WALL_CELL_TOL_M] == occupancy.OCCUPIED).any()


def test_rgbd_wall_lands_in_the_right_cells():
    T = look_at([0.0, 0.0, 0.8], [1.0, 0.0, 0.8])
    m = Mapper(make_config(VOXEL_M))
    for i in range(3):
        d, c, _ = render_rgbd(_wall(), SMALL_K, T, IMG_W, IMG_H, depth_noise=True, rng=np.random.default_rng(i))
        m.integrate(Frame(T, depth=d, rgb=c, K=SMALL_K))
    g = m.occupancy_grid()
    xs, ys = _cell_centres(g)
    r, c = np.nonzero(g.data == occupancy.OCCUPIED)
    assert len(r) > 20
    assert np.abs(xs[c] - WALL_X_M).max() <= WALL_CELL_TOL_M + 0.02    # + depth noise at 2 m
    # The band in front of the wall (within the truncation distance) is observed free.
    rows = np.abs(ys) < 0.3
    front = (xs > WALL_X_M - m.params.trunc_m + VOXEL_M) & (xs < WALL_X_M - 2 * VOXEL_M)
    assert (g.data[np.ix_(rows, front)] == occupancy.FREE).mean() > 0.9


def _read_pgm(path):
    data = path.read_bytes()
    assert data[:2] == b"P5"
    fields, pos = [], 2
    while len(fields) < 3:                                # width, height, maxval, skipping comments
        while data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.index(b"\n", pos) + 1
            continue
        end = pos
        while not data[end:end + 1].isspace():
            end += 1
        fields.append(int(data[pos:end]))
        pos = end
    w, h, maxval = fields
    assert maxval == 255
    img = np.frombuffer(data[pos + 1:], np.uint8)
    assert img.size == w * h                              # nothing missing, nothing extra
    return img.reshape(h, w)


def test_map_server_files(wall_lidar_map, tmp_path):
    g = wall_lidar_map.occupancy_grid()
    yaml_path = occupancy.save_map_server(g, tmp_path / "occ.pgm")
    meta = yaml.safe_load(yaml_path.read_text())
    assert {"image", "resolution", "origin", "negate", "occupied_thresh", "free_thresh"} <= set(meta)
    assert meta["image"] == "occ.pgm" and (tmp_path / meta["image"]).is_file()
    assert meta["resolution"] == pytest.approx(VOXEL_M) and meta["negate"] == 0
    assert len(meta["origin"]) == 3 and 0 < meta["free_thresh"] < meta["occupied_thresh"] < 1
    img = _read_pgm(tmp_path / meta["image"])
    assert img.shape == g.data.shape
    assert set(np.unique(img).tolist()) <= {0, 205, 254}
    assert np.array_equal(occupancy.load_pgm(tmp_path / "occ.pgm"), img)
    # map_server: pixel (row i, col j) is at origin + (j + 0.5, H - 1 - i + 0.5) * resolution.
    H = img.shape[0]
    i, j = np.nonzero(img == 0)
    x = meta["origin"][0] + (j + 0.5) * meta["resolution"]
    y = meta["origin"][1] + (H - 1 - i + 0.5) * meta["resolution"]
    near = np.abs(y - SENSOR_XY_M[1]) < CHECK_HALF_WIDTH_M
    assert near.sum() > 10 and np.abs(x[near] - WALL_X_M).max() <= WALL_CELL_TOL_M
    # ... and free space lies on the sensor's side, at the same rows.
    i, j = np.nonzero(img == 254)
    x = meta["origin"][0] + (j + 0.5) * meta["resolution"]
    assert (x < WALL_X_M).all()
    # Values follow the grid cell by cell (flipped vertically).
    expect = np.full(g.data.shape, 205)
    expect[g.data == occupancy.FREE] = 254
    expect[g.data == occupancy.OCCUPIED] = 0
    assert np.array_equal(img, expect[::-1])
    # Read back with map_server's trinary rules, the files give the grid itself: unknown stays unknown.
    p = (255.0 - img[::-1]) / 255.0
    loaded = np.where(p > meta["occupied_thresh"], 100, np.where(p < meta["free_thresh"], 0, -1))
    assert (g.data == occupancy.UNKNOWN).any() and np.array_equal(loaded, g.data)


@pytest.mark.parametrize("free, occ", [(0.25, 0.65), (0.0, 0.65), (0.1, 0.1), (0.1, 1.0)])
def test_map_server_thresholds_that_misread_pixels_are_refused(wall_lidar_map, tmp_path, free, occ):
    with pytest.raises(ValueError, match="free_thresh"):
        occupancy.save_map_server(wall_lidar_map.occupancy_grid(), tmp_path / "occ.pgm", occ, free)
    assert not (tmp_path / "occ.pgm").exists()


def test_pruned_space_stays_free_in_the_grid(wall_lidar_map):
    import copy
    m = copy.deepcopy(wall_lidar_map)
    before = m.occupancy_grid()
    o = m.octree
    s = o.alive_slots()
    # Make every free-looking brick confidently free so the whole region in front can be pruned.
    freeish = s[((o.attrs["occ"][s].float() < 0) | (o.attrs["weight"][s] == 0)).all(1)
                & (o.attrs["occ"][s].float() < 0).any(1)]
    o.attrs["occ"][freeish] = m.params.l_min
    assert m.prune() > 0
    after = m.occupancy_grid()
    xs_b, ys_b = _cell_centres(before)
    xs_a, ys_a = _cell_centres(after)
    # Compare on world coordinates: every cell free before is still free (none turned unknown).
    fb = np.argwhere(before.data == occupancy.FREE)
    ia = np.round((ys_b[fb[:, 0]] - ys_a[0]) / VOXEL_M).astype(int)
    ja = np.round((xs_b[fb[:, 1]] - xs_a[0]) / VOXEL_M).astype(int)
    ok = (ia >= 0) & (ia < after.data.shape[0]) & (ja >= 0) & (ja < after.data.shape[1])
    assert ok.all()
    assert (after.data[ia, ja] == occupancy.FREE).all()
    assert (after.data == occupancy.OCCUPIED).sum() == (before.data == occupancy.OCCUPIED).sum()


@pytest.mark.parametrize("level", [0, 2])
def test_occupied_voxels_levels(wall_lidar_map, level):
    m = wall_lidar_map
    o = m.octree
    thr = m._occ_threshold()
    pts, cols = m.occupied_points(level)
    assert pts.dtype == np.float32 and cols.dtype == np.uint8 and len(pts) == len(cols)
    s = o.alive_slots()
    occ = o.attrs["occ"][s].float()
    b, v = (occ > thr).nonzero(as_tuple=True)
    from voxmap_ros.core.octree import VOXEL_OFFSETS
    vox = o.brick_coord[s[b]].long() * BRICK + VOXEL_OFFSETS[v]
    if level == 0:
        expect = ((vox.double() + 0.5) * VOXEL_M).numpy()
        assert len(pts) == len(expect) > 100
        assert np.allclose(np.sort(pts, axis=0), np.sort(expect, axis=0), atol=1e-6)
        assert np.abs(pts[:, 0] - WALL_X_M).max() <= math.sqrt(3) / 2 * VOXEL_M + 1e-3
    else:
        size = VOXEL_M * BRICK * 2 ** level
        nodes = torch.unique(vox >> (3 + level), dim=0)
        expect = ((nodes.double() + 0.5) * size).numpy()
        assert len(pts) == len(expect) > 0
        assert np.allclose(np.sort(pts, axis=0), np.sort(expect, axis=0), atol=1e-5)
        assert len(pts) < len(m.occupied_points(0)[0])


@pytest.mark.parametrize("vs", [0.05, 0.1, 0.02, 0.03])
def test_band_edges_on_voxel_centres_include_those_voxels(vs):
    # Band edges that are centres, just past them, and random ones: against the centres themselves.
    rng = np.random.default_rng(1)
    ks = np.arange(-1000, 1000)                    # centres reach past +-10 m at every vs here
    centres = (ks + 0.5) * vs
    near = centres[(centres > -4) & (centres < 4)]
    edges = list(near[::7]) + list(np.nextafter(near[::11], np.inf)) + list(rng.uniform(-10, 10, 200))
    for lo in edges[::3]:
        for hi in edges[::5]:
            first, last = occupancy.centre_index_range(lo, hi, vs)
            inside = ks[(centres >= lo) & (centres <= hi)]
            if inside.size:
                assert (first, last) == (inside[0], inside[-1]), (lo, hi)
            else:
                assert first > last, (lo, hi)
