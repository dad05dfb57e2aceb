"""Rigid poses without ROS: 4x4 matrices <-> (xyz, quaternion), and a time-indexed pose buffer.

Conventions: `T_A_B` (4, 4) float64 maps points of frame B into frame A; quaternions are
(x, y, z, w) like geometry_msgs/Quaternion; stamps are int nanoseconds.

`PoseBuffer` is what the node uses when poses come from a topic (odometry, a pose stream) rather
than TF: it interpolates the pose at a sensor stamp and tells the caller whether a stamp it cannot
serve yet is worth retrying (`'wait'`) or must be dropped (`'too_old'`).
"""
from __future__ import annotations

import bisect
import math
import threading
from typing import Sequence

import numpy as np

# A rotation block is accepted as rigid when |R^T R - I| and |det R - 1| stay below this
# (loose enough for float32 input, tight enough to reject scaled or sheared matrices).
RIGID_TOL = 1e-4
# Quaternions whose norm is below this are rejected (e.g. an all-zero default message).
QUAT_MIN_NORM = 1e-6
# Below this angle (rad) between two orientations slerp falls back to normalized lerp.
SLERP_LINEAR_RAD = 1e-6

_NS_PER_S = 1_000_000_000


# ---------------------------------------------------------------------------- quaternion maths
def quat_to_rotation(quat_xyzw: Sequence[float]) -> np.ndarray:
    """Quaternion (4,) (x, y, z, w), any non-zero norm (normalized here) -> rotation (3, 3) float64.

    Raises ValueError for a non-finite or (near) zero quaternion."""
    q = np.asarray(quat_xyzw, dtype=np.float64).reshape(-1)
    if q.shape != (4,):
        raise ValueError(f"quaternion must have 4 elements (x, y, z, w), got shape {q.shape}")
    if not np.all(np.isfinite(q)):
        raise ValueError(f"quaternion must be finite, got {q.tolist()}")
    n = float(np.linalg.norm(q))
    if n < QUAT_MIN_NORM:
        raise ValueError(f"quaternion norm {n:.3g} is (near) zero; expected a unit quaternion (x, y, z, w)")
    x, y, z, w = q / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ], dtype=np.float64)


def rotation_to_quat(R: np.ndarray) -> np.ndarray:
    """Rotation (3, 3) -> unit quaternion (4,) float64 (x, y, z, w) with w >= 0.

    Uses the largest of the four diagonal combinations (numerically stable for all angles)."""
    R = np.asarray(R, dtype=np.float64)
    m00, m11, m22 = R[0, 0], R[1, 1], R[2, 2]
    tr = m00 + m11 + m22
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    elif m00 >= m11 and m00 >= m22:
        s = 2.0 * math.sqrt(max(1.0 + m00 - m11 - m22, 0.0))
        q = [0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif m11 >= m22:
        s = 2.0 * math.sqrt(max(1.0 + m11 - m00 - m22, 0.0))
        q = [(R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    else:
        s = 2.0 * math.sqrt(max(1.0 + m22 - m00 - m11, 0.0))
        q = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s, (R[1, 0] - R[0, 1]) / s]
    q = np.asarray(q, dtype=np.float64)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def rpy_to_rotation(rpy: Sequence[float]) -> np.ndarray:
    """(roll, pitch, yaw) rad about fixed x, y, z axes (ROS / URDF convention,
    R = Rz(yaw) @ Ry(pitch) @ Rx(roll)) -> rotation (3, 3) float64."""
    r, p, y = (float(v) for v in rpy)
    cr, sr, cp, sp, cy, sy = math.cos(r), math.sin(r), math.cos(p), math.sin(p), math.cos(y), math.sin(y)
    return np.array([
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ], dtype=np.float64)


def slerp(q0: np.ndarray, q1: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation between unit quaternions (4,) (x, y, z, w) along the shorter arc;
    t in [0, 1]. Returns a unit quaternion (4,) float64."""
    q0 = np.asarray(q0, dtype=np.float64)
    q1 = np.asarray(q1, dtype=np.float64)
    d = float(np.dot(q0, q1))
    if d < 0.0:                      # q and -q are the same rotation: take the short way round
        q1, d = -q1, -d
    d = min(d, 1.0)
    theta = math.acos(d)
    if theta < SLERP_LINEAR_RAD:
        q = (1.0 - t) * q0 + t * q1
    else:
        s = math.sin(theta)
        q = (math.sin((1.0 - t) * theta) / s) * q0 + (math.sin(t * theta) / s) * q1
    return q / np.linalg.norm(q)


# ---------------------------------------------------------------------------- 4x4 helpers
def nearest_rigid(T) -> np.ndarray:
    """(4, 4) float64 copy of T with its rotation block replaced by the nearest rotation (SVD):
    for recorded poses that carry rounding (7-Scenes files: ~1e-4) before they become quaternions."""
    M = np.array(T, dtype=np.float64)
    u, _, vt = np.linalg.svd(M[:3, :3])
    if np.linalg.det(u @ vt) < 0:
        raise ValueError("rotation block is a reflection (det < 0); expected a proper rotation")
    M[:3, :3] = u @ vt
    M[3] = (0.0, 0.0, 0.0, 1.0)
    return M


def check_rigid(T, name: str = "T") -> np.ndarray:
    """Validate a rigid transform and return it as a (4, 4) float64 copy.

    Raises ValueError unless T is (4, 4), finite, with last row (0, 0, 0, 1) and an orthonormal
    right-handed rotation block (within RIGID_TOL)."""
    try:
        M = np.array(T, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a (4, 4) numeric array: {e}") from None
    if M.shape != (4, 4):
        raise ValueError(f"{name} must have shape (4, 4), got {M.shape}")
    if not np.all(np.isfinite(M)):
        raise ValueError(f"{name} must be finite, got non-finite entries")
    if np.max(np.abs(M[3] - (0.0, 0.0, 0.0, 1.0))) > RIGID_TOL:
        raise ValueError(f"{name} last row must be (0, 0, 0, 1), got {M[3].tolist()}")
    R = M[:3, :3]
    ortho = float(np.max(np.abs(R.T @ R - np.eye(3))))
    det = float(np.linalg.det(R))
    if ortho > RIGID_TOL or abs(det - 1.0) > RIGID_TOL:
        raise ValueError(f"{name} rotation block is not a rotation (|R^T R - I| = {ortho:.3g}, det = {det:.6g}); "
                         f"expected a rigid transform")
    M[3] = (0.0, 0.0, 0.0, 1.0)
    return M


def pose_from_xyz_quat(xyz: Sequence[float], quat_xyzw: Sequence[float]) -> np.ndarray:
    """Translation (3,) metres + quaternion (4,) (x, y, z, w) -> T (4, 4) float64.

    The quaternion is normalized; a non-finite or zero one raises ValueError."""
    t = np.asarray(xyz, dtype=np.float64).reshape(-1)
    if t.shape != (3,):
        raise ValueError(f"xyz must have 3 elements, got shape {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError(f"xyz must be finite, got {t.tolist()}")
    T = np.eye(4)
    T[:3, :3] = quat_to_rotation(quat_xyzw)
    T[:3, 3] = t
    return T


def xyz_quat_from_pose(T) -> tuple[np.ndarray, np.ndarray]:
    """T (4, 4) rigid -> (xyz (3,) float64, quat (4,) float64 (x, y, z, w), w >= 0).
    Raises ValueError for a non-rigid T."""
    M = check_rigid(T)
    return M[:3, 3].copy(), rotation_to_quat(M[:3, :3])


def static_extrinsic(xyz: Sequence[float], rpy_or_quat: Sequence[float]) -> np.ndarray:
    """A fixed sensor mounting T_B_S (4, 4) float64 from a translation (3,) metres and either
    (roll, pitch, yaw) (3,) radians (fixed axes, ROS convention) or a quaternion (4,) (x, y, z, w)."""
    r = np.asarray(rpy_or_quat, dtype=np.float64).reshape(-1)
    if r.shape == (4,):
        return pose_from_xyz_quat(xyz, r)
    if r.shape != (3,):
        raise ValueError(f"rotation must be (roll, pitch, yaw) or (x, y, z, w), got {r.size} values")
    if not np.all(np.isfinite(r)):
        raise ValueError(f"roll, pitch, yaw must be finite, got {r.tolist()}")
    T = pose_from_xyz_quat(xyz, (0.0, 0.0, 0.0, 1.0))
    T[:3, :3] = rpy_to_rotation(r)
    return T


def interpolate_pose(T0: np.ndarray, T1: np.ndarray, t: float) -> np.ndarray:
    """Pose between rigid T0 (t = 0) and T1 (t = 1): slerp rotation, linear translation. (4, 4) float64."""
    q = slerp(rotation_to_quat(T0[:3, :3]), rotation_to_quat(T1[:3, :3]), t)
    T = np.eye(4)
    T[:3, :3] = quat_to_rotation(q)
    T[:3, 3] = (1.0 - t) * T0[:3, 3] + t * T1[:3, 3]
    return T


def _as_stamp(stamp_ns) -> int:
    if isinstance(stamp_ns, (bool, np.bool_)) or not isinstance(stamp_ns, (int, np.integer)):
        raise ValueError(f"stamp_ns must be an integer number of nanoseconds, got {stamp_ns!r}")
    return int(stamp_ns)


# ---------------------------------------------------------------------------- buffer
class PoseBuffer:
    """Time-ordered, bounded buffer of (stamp_ns, T_W_B) with interpolated lookups. Thread-safe.

    max_age_s: samples older than (newest stamp - max_age_s) are evicted.
    max_len: at most this many samples are kept (oldest evicted first; `evicted_by_count` counts
        those that were still inside the age window).
    tolerance_ns: a stamp up to this far outside [oldest, newest] is served with the nearest
        end sample (no extrapolation beyond holding the end pose); 0 = exact bounds.
    """

    def __init__(self, max_age_s: float = 10.0, max_len: int = 2000, tolerance_ns: int = 0):
        if not (math.isfinite(max_age_s) and max_age_s > 0):
            raise ValueError(f"max_age_s must be a positive number of seconds, got {max_age_s}")
        if int(max_len) < 2:
            raise ValueError(f"max_len must be >= 2 (interpolation needs two samples), got {max_len}")
        if _as_stamp(tolerance_ns) < 0:
            raise ValueError(f"tolerance_ns must be >= 0, got {tolerance_ns}")
        self.max_age_ns = int(round(max_age_s * _NS_PER_S))
        self.max_len = int(max_len)
        self.tolerance_ns = int(tolerance_ns)
        self._stamps: list[int] = []
        self._poses: list[np.ndarray] = []          # (4, 4) float64, validated
        self._quats: list[np.ndarray] = []          # (4,) cached rotation quaternions
        self.evicted_by_count = 0                    # samples inside the age window dropped for max_len
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._stamps)

    @property
    def oldest_ns(self) -> int | None:
        with self._lock:
            return self._stamps[0] if self._stamps else None

    @property
    def newest_ns(self) -> int | None:
        with self._lock:
            return self._stamps[-1] if self._stamps else None

    def clear(self) -> None:
        """Forget every sample (e.g. after a time jump backwards such as a bag loop)."""
        with self._lock:
            self._stamps.clear()
            self._poses.clear()
            self._quats.clear()

    def add(self, stamp_ns: int, T) -> bool:
        """Insert the pose T (4, 4) rigid at `stamp_ns`; keeps stamps sorted, replaces a sample with
        the same stamp. Returns False when the sample is already older than the age window (not
        kept). Raises ValueError for a bad stamp or a non-finite / non-rigid T (buffer unchanged)."""
        s = _as_stamp(stamp_ns)
        M = check_rigid(T, "pose")
        q = rotation_to_quat(M[:3, :3])
        with self._lock:
            if self._stamps and s < self._stamps[-1] - self.max_age_ns:
                return False
            i = bisect.bisect_left(self._stamps, s)
            if i < len(self._stamps) and self._stamps[i] == s:
                self._poses[i], self._quats[i] = M, q
            else:
                self._stamps.insert(i, s)
                self._poses.insert(i, M)
                self._quats.insert(i, q)
            self._evict()
        return True

    def _evict(self) -> None:
        limit = self._stamps[-1] - self.max_age_ns
        n_old = bisect.bisect_left(self._stamps, limit)
        n_drop = max(n_old, len(self._stamps) - self.max_len)
        self.evicted_by_count += n_drop - n_old
        if n_drop > 0:
            del self._stamps[:n_drop], self._poses[:n_drop], self._quats[:n_drop]

    def status(self, stamp_ns: int) -> str:
        """'ok' when lookup(stamp_ns) can answer now, 'wait' when the stamp is newer than the newest
        sample (or the buffer is empty: retry later), 'too_old' when it is older than the oldest
        sample (drop the data: it will never be answerable)."""
        s = _as_stamp(stamp_ns)
        with self._lock:
            return self._status(s)

    def _status(self, s: int) -> str:
        if not self._stamps or s > self._stamps[-1] + self.tolerance_ns:
            return "wait"
        if s < self._stamps[0] - self.tolerance_ns:
            return "too_old"
        return "ok"

    def lookup(self, stamp_ns: int) -> np.ndarray | None:
        """T (4, 4) float64 at `stamp_ns`, interpolated between the bracketing samples (slerp for
        rotation, linear for translation); None when status(stamp_ns) != 'ok'."""
        s = _as_stamp(stamp_ns)
        with self._lock:
            if self._status(s) != "ok":
                return None
            st = self._stamps
            if s <= st[0]:
                return self._poses[0].copy()
            if s >= st[-1]:
                return self._poses[-1].copy()
            i = bisect.bisect_left(st, s)
            if st[i] == s:
                return self._poses[i].copy()
            s0, s1 = st[i - 1], st[i]
            T0, T1, q0, q1 = self._poses[i - 1], self._poses[i], self._quats[i - 1], self._quats[i]
        t = (s - s0) / (s1 - s0)
        T = np.eye(4)
        T[:3, :3] = quat_to_rotation(slerp(q0, q1, t))
        T[:3, 3] = (1.0 - t) * T0[:3, 3] + t * T1[:3, 3]
        return T
