"""PoseBuffer and pose helpers (ROS-free)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from voxmap_ros.poses import (PoseBuffer, check_rigid, interpolate_pose, pose_from_xyz_quat, quat_to_rotation,
                              rotation_to_quat, rpy_to_rotation, slerp, static_extrinsic, xyz_quat_from_pose)

ATOL_M = 1e-9          # translation agreement (m)
ATOL_ROT = 1e-9        # rotation matrix entries agreement
S = 1_000_000_000      # ns per s


def rot_z(angle_rad: float) -> np.ndarray:
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float64)


def pose(R=None, t=(0, 0, 0)) -> np.ndarray:
    T = np.eye(4)
    if R is not None:
        T[:3, :3] = R
    T[:3, 3] = t
    return T


def random_rotation(rng) -> np.ndarray:
    q = rng.normal(size=4)
    return quat_to_rotation(q)


def test_quat_roundtrip_all_branches():
    rng = np.random.default_rng(0)
    rotations = [random_rotation(rng) for _ in range(200)]
    # Angles near pi exercise the non-trace branches of rotation_to_quat.
    rotations += [rpy_to_rotation((math.pi, 0, 0)), rpy_to_rotation((0, math.pi, 0)), rot_z(math.pi),
                  rpy_to_rotation((math.pi - 1e-3, 0.2, -0.1))]
    for R in rotations:
        q = rotation_to_quat(R)
        assert abs(np.linalg.norm(q) - 1) < 1e-12 and q[3] >= 0
        np.testing.assert_allclose(quat_to_rotation(q), R, atol=1e-9)


def test_rpy_convention_matches_fixed_axes():
    r, p, y = 0.3, -0.4, 1.1
    Rx = np.array([[1, 0, 0], [0, math.cos(r), -math.sin(r)], [0, math.sin(r), math.cos(r)]])
    Ry = np.array([[math.cos(p), 0, math.sin(p)], [0, 1, 0], [-math.sin(p), 0, math.cos(p)]])
    np.testing.assert_allclose(rpy_to_rotation((r, p, y)), rot_z(y) @ Ry @ Rx, atol=ATOL_ROT)


def test_pose_helpers_roundtrip():
    q = np.array([0.1, -0.2, 0.3, 0.9])
    T = pose_from_xyz_quat((1, 2, 3), q)
    xyz, q2 = xyz_quat_from_pose(T)
    np.testing.assert_allclose(xyz, (1, 2, 3), atol=ATOL_M)
    np.testing.assert_allclose(q2, q / np.linalg.norm(q), atol=1e-12)
    # A quaternion and its negation give the same pose.
    np.testing.assert_allclose(pose_from_xyz_quat((0, 0, 0), -q), pose_from_xyz_quat((0, 0, 0), q), atol=ATOL_ROT)


def test_static_extrinsic_rpy_and_quat_agree():
    rpy = (0.1, 0.2, -0.7)
    T1 = static_extrinsic((0.1, 0, 0.5), rpy)
    T2 = static_extrinsic((0.1, 0, 0.5), rotation_to_quat(rpy_to_rotation(rpy)))
    np.testing.assert_allclose(T1, T2, atol=ATOL_ROT)
    np.testing.assert_allclose(T1[:3, 3], (0.1, 0, 0.5))
    with pytest.raises(ValueError, match="roll, pitch, yaw"):
        static_extrinsic((0, 0, 0), (1, 2))
    with pytest.raises(ValueError, match="finite"):
        static_extrinsic((0, 0, 0), (np.nan, 0, 0))


@pytest.mark.parametrize("bad_q", [(0, 0, 0, 0), (np.nan, 0, 0, 1), (0, 0, 1)])
def test_bad_quaternions(bad_q):
    with pytest.raises(ValueError):
        pose_from_xyz_quat((0, 0, 0), bad_q)


def test_check_rigid_rejects():
    with pytest.raises(ValueError, match="shape"):
        check_rigid(np.eye(3))
    with pytest.raises(ValueError, match="finite"):
        check_rigid(pose(t=(np.inf, 0, 0)))
    with pytest.raises(ValueError, match="not a rotation"):
        check_rigid(pose(R=2 * np.eye(3)))
    with pytest.raises(ValueError, match="not a rotation"):
        check_rigid(pose(R=np.diag([1.0, 1.0, -1.0])))            # reflection
    bad = np.eye(4)
    bad[3, 0] = 1
    with pytest.raises(ValueError, match="last row"):
        check_rigid(bad)


def test_slerp_midpoint():
    q0 = rotation_to_quat(rot_z(0.0))
    q1 = rotation_to_quat(rot_z(math.pi / 2))
    np.testing.assert_allclose(quat_to_rotation(slerp(q0, q1, 0.5)), rot_z(math.pi / 4), atol=ATOL_ROT)
    np.testing.assert_allclose(quat_to_rotation(slerp(q0, q1, 0.25)), rot_z(math.pi / 8), atol=ATOL_ROT)
    # Shorter arc: from +170 deg to -170 deg the midpoint is 180 deg, not 0.
    qa, qb = rotation_to_quat(rot_z(math.radians(170))), rotation_to_quat(rot_z(math.radians(-170)))
    np.testing.assert_allclose(quat_to_rotation(slerp(qa, qb, 0.5)), rot_z(math.pi), atol=ATOL_ROT)
    # Identical endpoints (the lerp fallback) stay unit.
    q = slerp(q1, q1, 0.3)
    np.testing.assert_allclose(q, q1, atol=1e-12)


def test_buffer_interpolates_midpoint():
    buf = PoseBuffer()
    buf.add(1 * S, pose(rot_z(0.0), (0, 0, 0)))
    buf.add(2 * S, pose(rot_z(math.pi / 2), (2, -4, 6)))
    T = buf.lookup(int(1.5 * S))
    np.testing.assert_allclose(T[:3, :3], rot_z(math.pi / 4), atol=ATOL_ROT)
    np.testing.assert_allclose(T[:3, 3], (1, -2, 3), atol=ATOL_M)
    T = buf.lookup(int(1.25 * S))
    np.testing.assert_allclose(T[:3, :3], rot_z(math.pi / 8), atol=ATOL_ROT)
    np.testing.assert_allclose(T[:3, 3], (0.5, -1, 1.5), atol=ATOL_M)
    # Exact samples come back unchanged.
    np.testing.assert_allclose(buf.lookup(2 * S), pose(rot_z(math.pi / 2), (2, -4, 6)), atol=ATOL_ROT)
    np.testing.assert_allclose(interpolate_pose(pose(rot_z(0)), pose(rot_z(1.0), (1, 0, 0)), 0.5),
                               pose(rot_z(0.5), (0.5, 0, 0)), atol=ATOL_ROT)


def test_buffer_bounds_and_status():
    buf = PoseBuffer()
    assert buf.status(5) == "wait" and buf.lookup(5) is None          # empty: wait for poses
    buf.add(10 * S, pose())
    buf.add(20 * S, pose(t=(1, 0, 0)))
    assert buf.status(15 * S) == "ok"
    assert buf.status(10 * S) == "ok" and buf.status(20 * S) == "ok"
    assert buf.status(20 * S + 1) == "wait" and buf.lookup(20 * S + 1) is None
    assert buf.status(10 * S - 1) == "too_old" and buf.lookup(10 * S - 1) is None
    # A tolerance serves stamps slightly outside with the end pose.
    tol = PoseBuffer(tolerance_ns=1000)
    tol.add(10 * S, pose())
    tol.add(20 * S, pose(t=(1, 0, 0)))
    np.testing.assert_allclose(tol.lookup(20 * S + 1000), pose(t=(1, 0, 0)))
    np.testing.assert_allclose(tol.lookup(10 * S - 1000), pose())
    assert tol.status(20 * S + 1001) == "wait" and tol.status(10 * S - 1001) == "too_old"


def test_buffer_single_sample():
    buf = PoseBuffer()
    buf.add(7, pose(t=(1, 2, 3)))
    np.testing.assert_allclose(buf.lookup(7)[:3, 3], (1, 2, 3))
    assert buf.status(8) == "wait" and buf.status(6) == "too_old"


def test_buffer_out_of_order_and_duplicates():
    buf = PoseBuffer()
    for s in (3, 1, 2, 5, 4):
        buf.add(s * S, pose(t=(s, 0, 0)))
    assert buf._stamps == [s * S for s in (1, 2, 3, 4, 5)]
    for s in range(1, 6):
        np.testing.assert_allclose(buf.lookup(s * S)[:3, 3], (s, 0, 0))
    buf.add(3 * S, pose(t=(30, 0, 0)))                      # duplicate stamp replaces
    assert len(buf) == 5
    np.testing.assert_allclose(buf.lookup(3 * S)[:3, 3], (30, 0, 0))
    np.testing.assert_allclose(buf.lookup(int(2.5 * S))[:3, 3], (16, 0, 0), atol=ATOL_M)


def test_buffer_eviction_by_age_and_len():
    buf = PoseBuffer(max_age_s=1.0, max_len=1000)
    for k in range(30):                                     # 0.1 s apart, 2.9 s in all
        buf.add(k * S // 10, pose(t=(k, 0, 0)))
    assert buf.oldest_ns == 19 * S // 10 and buf.newest_ns == 29 * S // 10
    assert buf.status(18 * S // 10) == "too_old"
    assert buf.add(0, pose()) is False and buf.oldest_ns == 19 * S // 10      # too old to keep
    # Out-of-order but inside the window is kept.
    assert buf.add(int(1.95 * S), pose()) is True

    short = PoseBuffer(max_age_s=100.0, max_len=5)
    for k in range(12):
        short.add(k, pose(t=(k, 0, 0)))
    assert len(short) == 5 and short.oldest_ns == 7 and short.newest_ns == 11
    assert short.evicted_by_count == 7 and buf.evicted_by_count == 0
    short.clear()
    assert len(short) == 0 and short.status(0) == "wait"


def test_buffer_rejects_bad_input_without_change():
    buf = PoseBuffer()
    buf.add(1, pose())
    with pytest.raises(ValueError, match="finite"):
        buf.add(2, pose(t=(np.nan, 0, 0)))
    with pytest.raises(ValueError, match="not a rotation"):
        buf.add(2, pose(R=1.5 * np.eye(3)))
    with pytest.raises(ValueError, match="shape"):
        buf.add(2, np.eye(3))
    with pytest.raises(ValueError, match="integer"):
        buf.add(2.5, pose())
    with pytest.raises(ValueError, match="integer"):
        buf.lookup(1.0)
    assert len(buf) == 1
    with pytest.raises(ValueError):
        PoseBuffer(max_age_s=0)
    with pytest.raises(ValueError):
        PoseBuffer(max_len=1)
    with pytest.raises(ValueError):
        PoseBuffer(tolerance_ns=-1)
    # float32 rigid input (rounding) is accepted.
    buf.add(3, pose(rot_z(0.3), (1, 2, 3)).astype(np.float32))
    assert len(buf) == 2
