"""The node's frame queues and timeline rules (voxmap_ros.ros.frame_queues), without a ROS graph."""
from dataclasses import dataclass

from voxmap_ros.ros.frame_queues import ColorBuffer, FrameQueues, StampJumps

S = 1_000_000_000          # one second in ns
WINDOW = 10 * S            # node.pose_buffer_s = 10


@dataclass
class Item:
    kind: str
    stamp_ns: int


def push(q, kind, t_s, size=5):
    item = Item(kind, int(t_s * S))
    return item, q.push(item, size, WINDOW)


def test_in_order_frames_are_queued_and_taken_oldest_first():
    q = FrameQueues(("rgbd", "lidar"))
    push(q, "rgbd", 1.0)
    push(q, "lidar", 0.5)
    push(q, "rgbd", 2.0)
    heads = q.heads()
    assert [(h.kind, h.stamp_ns) for h in heads] == [("lidar", S // 2), ("rgbd", S)]
    assert q.take(heads[0]) and q.pending() == 3           # taken but not done still counts
    q.done()
    assert q.pending() == 2 and q.depths() == {"rgbd": 2, "lidar": 0}
    assert not q.take(heads[0])                               # no longer at the head


def test_full_queue_drops_the_oldest():
    q = FrameQueues(("rgbd",))
    for t in range(4):
        _, r = push(q, "rgbd", t, size=3)
    assert r.accepted and r.overflow == 1
    assert [h.stamp_ns for h in q.heads()] == [S]


def test_out_of_order_frame_is_refused_and_nothing_changes():
    q = FrameQueues(("rgbd",))
    push(q, "rgbd", 5.0)
    _, r = push(q, "rgbd", 4.0)                              # behind, but within the window
    assert not r.accepted and r.newest_ns == 5 * S and r.restarted is None
    _, r = push(q, "rgbd", 3.0)                              # a second one restarts nothing either
    assert not r.accepted and q.depths() == {"rgbd": 1}


def test_one_stray_stamp_far_behind_is_dropped_two_in_a_row_restart_the_stream():
    q = FrameQueues(("rgbd",))
    push(q, "rgbd", 100.0)
    push(q, "rgbd", 101.0)
    _, r = push(q, "rgbd", 50.0)                             # one stray stamp
    assert not r.accepted and q.depths() == {"rgbd": 2}
    _, r = push(q, "rgbd", 102.0)                            # in order again: the stray is forgotten
    assert r.accepted
    _, r = push(q, "rgbd", 51.0)
    assert not r.accepted                                    # a new first stray, not a confirmation
    _, r = push(q, "rgbd", 52.0)                             # the second in a row: time went back
    assert r.accepted and r.restarted == 3
    assert [h.stamp_ns for h in q.heads()] == [52 * S]
    _, r = push(q, "rgbd", 53.0)
    assert r.accepted and r.restarted is None


def test_two_strays_far_from_each_other_do_not_confirm_a_jump():
    q = FrameQueues(("rgbd",))
    push(q, "rgbd", 1000.0)
    assert not push(q, "rgbd", 10.0)[1].accepted
    assert not push(q, "rgbd", 500.0)[1].accepted            # 490 s from the first stray
    assert push(q, "rgbd", 505.0)[1].accepted                # within the window of the last one


def test_dropped_frame_stops_counting_as_the_newest():
    q = FrameQueues(("rgbd",))
    early, _ = push(q, "rgbd", 1.0)
    assert q.take(early)
    q.done()
    future, _ = push(q, "rgbd", 3.15e7)                      # stamped a year ahead, never gets a pose
    assert q.drop(future)
    _, r = push(q, "rgbd", 2.0)                              # the stream goes on from the last taken frame
    assert r.accepted and r.newest_ns == S
    assert not push(q, "rgbd", 0.5)[1].accepted              # still behind the frame already integrated


def test_restart_empties_the_queues_and_forgets_the_timeline():
    jumps = StampJumps()
    q = FrameQueues(("rgbd", "lidar"), jumps)
    push(q, "rgbd", 100.0)
    push(q, "lidar", 100.0)
    push(q, "lidar", 101.0)
    assert not push(q, "lidar", 10.0)[1].accepted            # a stray candidate is remembered
    assert q.restart() == {"rgbd": 1, "lidar": 2}
    assert q.pending() == 0
    _, r = push(q, "lidar", 10.5)                            # the new timeline starts anywhere
    assert r.accepted and r.restarted is None and r.newest_ns == -1


def test_stamp_jumps_are_kept_per_stream():
    j = StampJumps()
    assert not j.confirms("pose:a", 5 * S, WINDOW)
    assert not j.confirms("pose:b", 5 * S, WINDOW)          # another stream: its own first stray
    assert j.confirms("pose:a", 6 * S, WINDOW)
    assert not j.confirms("pose:a", 7 * S, WINDOW)          # confirmed once, then starts over
    j.forget("pose:b")
    assert not j.confirms("pose:b", 6 * S, WINDOW)


def test_a_stream_restarted_by_a_time_jump_forgets_the_old_timeline():
    """After push restarts a stream (time went back), dropping the new timeline's first frame must
    not bring back the old timeline's last integrated stamp as the newest."""
    q = FrameQueues(("rgbd",))
    old, _ = push(q, "rgbd", 100.0)
    assert q.take(old)
    q.done()
    assert not push(q, "rgbd", 0.0)[1].accepted              # a stray candidate
    first, r = push(q, "rgbd", 0.1)                          # confirmed: the stream restarts
    assert r.accepted and r.restarted == 0
    assert q.drop(first)                                     # e.g. no pose at that stamp
    _, r = push(q, "rgbd", 0.2)
    assert r.accepted and r.newest_ns == -1


def test_colour_images_stay_while_a_queued_depth_frame_can_pair_with_them():
    buf = ColorBuffer(keep_recent=3)
    tol = S // 100
    for i in range(20):                                      # depth frame at 0 s still queued
        buf.add(i * S // 30, f"rgb{i}", oldest_queued_ns=0, tolerance_ns=tol, max_items=100)
    assert len(buf) == 20
    assert buf.nearest(0, tol) == ("rgb0", 19 * S // 30)
    buf.add(20 * S // 30, "rgb20", oldest_queued_ns=10 * S // 30, tolerance_ns=tol, max_items=100)
    assert len(buf) == 11 and buf.nearest(0, tol)[0] is None   # older than any queued frame
    buf.add(21 * S // 30, "rgb21", oldest_queued_ns=None, tolerance_ns=tol, max_items=100)
    assert len(buf) == 3                                     # nothing queued: the recent ones
    for i in range(22, 40):
        buf.add(i * S // 30, f"rgb{i}", oldest_queued_ns=0, tolerance_ns=tol, max_items=5)
    assert len(buf) == 5 and buf.nearest(39 * S // 30, tol)[0] == "rgb39"    # the hard cap
    assert buf.nearest(39 * S // 30 + S, tol) == (None, 39 * S // 30)
    buf.clear()
    assert len(buf) == 0 and buf.nearest(0, tol) == (None, -1)
