"""Watch a running voxmap node from another process: its /diagnostics values and ~/save_map.

Used by `make demo` and by `voxmap_bag_player --save-map`, so that a machine without the `ros2`
command line can still see what the node did with a bag and get its outputs written.
"""
from __future__ import annotations

import time

DROP_REASONS = ("dropped_queue", "dropped_no_pose", "dropped_non_monotonic")


class NodeWatcher:
    """An rclpy node in a context of its own (so it can live next to another one in the same
    process), subscribed to /diagnostics and holding a client of `/<node_name>/save_map`."""

    def __init__(self, node_name: str = "voxmap", domain_id: int | None = None):
        import rclpy
        import rclpy.executors
        from diagnostic_msgs.msg import DiagnosticArray
        from std_srvs.srv import Trigger
        self.rclpy = rclpy
        self.node_name = node_name.strip("/")
        self.ctx = rclpy.context.Context()
        rclpy.init(context=self.ctx, domain_id=domain_id)
        self.node = rclpy.create_node("voxmap_watcher", context=self.ctx)
        self.values: dict[str, str] = {}
        self.updates = 0                       # diagnostics messages of our node seen so far
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.save = self.node.create_client(Trigger, f"/{self.node_name}/save_map")
        self.Trigger = Trigger
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)

    def _on_diag(self, msg) -> None:
        # The node names its status "<node name>: map" (the last part of a namespaced name).
        want = f"{self.node_name.rsplit('/', 1)[-1]}: map"
        for st in msg.status:
            if st.name == want:
                self.values = {kv.key: kv.value for kv in st.values}
                self.updates += 1

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=min(0.05, max(0.0, end - time.monotonic())))

    def num(self, key: str) -> float:
        """A diagnostics value as a number (0 when absent or not numeric)."""
        try:
            return float(self.values.get(key, 0))
        except ValueError:
            return 0.0

    def wait_ready(self, timeout_s: float, proc=None) -> None:
        """Wait for the node's ~/save_map service; RuntimeError when `proc` (the node's process,
        optional) exits first or the time runs out."""
        end = time.monotonic() + timeout_s
        while not self.save.service_is_ready():
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the node exited with code {proc.returncode}")
            if time.monotonic() > end:
                raise RuntimeError(f"node '/{self.node_name}' did not come up within {timeout_s:.0f} s "
                                   "(is it running, in the same ROS_DOMAIN_ID?)")
            self.spin_for(0.2)

    def _progress(self) -> tuple:
        return tuple(self.num(k) for k in sorted(self.values) if k.startswith(("received_", "integrated_",
                                                                            "dropped_", "empty_", "bad_")))

    def wait_idle(self, timeout_s: float, expected: int | None = None, settle_s: float = 2.5) -> bool:
        """Wait until the node has worked through its queues: nothing queued and either `expected`
        sensor frames received, or (expected None) no counter moving for settle_s. False on timeout."""
        end = time.monotonic() + timeout_s
        last, since = None, time.monotonic()
        while time.monotonic() < end:
            self.spin_for(0.5)
            if not self.values:
                continue
            queued = self.num("queue_rgbd") + self.num("queue_lidar")
            now = self._progress()
            if now != last:
                last, since = now, time.monotonic()
            if queued:
                continue
            if expected is not None and self.num("received_rgbd") + self.num("received_lidar") >= expected:
                self.spin_for(1.2)             # one more report, with the last frame integrated
                return True
            if expected is None and time.monotonic() - since >= settle_s:
                return True
        return False

    def save_map(self, timeout_s: float = 120.0) -> dict[str, str]:
        """Call ~/save_map; returns its output paths by name (mesh, map, occupancy_pgm, ...)."""
        if not self.save.wait_for_service(timeout_sec=min(timeout_s, 10.0)):
            raise RuntimeError(f"/{self.node_name}/save_map is not available")
        fut = self.save.call_async(self.Trigger.Request())
        end = time.monotonic() + timeout_s
        while not fut.done() and time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.1)
        if not fut.done():
            raise RuntimeError(f"/{self.node_name}/save_map did not answer within {timeout_s:.0f} s")
        resp = fut.result()
        if not resp.success:
            raise RuntimeError(f"/{self.node_name}/save_map failed: {resp.message}")
        return parse_paths(resp.message)

    def frame_report(self) -> list[str]:
        """Frames received / integrated / dropped (by reason) / empty / bad, one line each."""
        v = self.num
        lines = [f"frames received       RGB-D {v('received_rgbd'):.0f}, LiDAR {v('received_lidar'):.0f}",
                 f"frames integrated     RGB-D {v('integrated_rgbd'):.0f}, LiDAR {v('integrated_lidar'):.0f}"]
        reasons = {k: v(k) for k in sorted(self.values) if k.startswith(DROP_REASONS) and v(k)}
        dropped = sum(reasons.values())
        lines.append(f"frames dropped        {dropped:.0f}"
                     + (" (" + ", ".join(f"{k} {n:.0f}" for k, n in reasons.items()) + ")" if reasons else ""))
        other = {k: v(k) for k in sorted(self.values) if k.startswith(("empty_", "bad_")) and v(k)}
        if other:
            lines.append("bad or empty input    " + ", ".join(f"{k} {n:.0f}" for k, n in other.items()))
        return lines

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.ctx)


def parse_paths(message: str) -> dict[str, str]:
    """'mesh=/a/mesh.ply; map=/a/map.npz' (the ~/save_map answer) -> {'mesh': ..., 'map': ...}."""
    out = {}
    for part in message.split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out
