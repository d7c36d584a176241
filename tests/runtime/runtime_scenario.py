"""Test helper: one drive of the ssov_segmenter node over DDS on the shipped real sweep, the same whether the node
runs in this process or as its own process.

The ego drives 4 m and turns 8 deg between two sweeps of the same world (the real sweep, then the same points seen
from the second pose), with odometry: the first sweep is refined by AFI, the second by streaming AFI with the first
voting.  The text query "car" is active for both.  Every import of the project happens inside the functions, so
that under :func:`runtime_blocker.blocked` they are fresh imports.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SWEEP = next((REPO / "data" / "nuscenes_sample").glob("*LIDAR_TOP*.pcd.bin"))
S = 1_000_000_000
LIDAR_TO_BASE = [0.9, 0.0, 1.8, 0.0, 0.0, 0.0, 1.0]  # x y z qx qy qz qw
QUERY = "car"
# the node's parameters for the drive (everything else: its defaults, as config/ssov_node.yaml lists them)
PARAMS = {"afi.enabled": True, "temporal.history": 2, "temporal.sensor_to_base": LIDAR_TO_BASE,
          "output.diagnostics_period_s": 0.2}
NODE = "/ssov_segmenter"


def ros_arg(value) -> str:
    """A parameter value as ``-p name:=value`` writes it (YAML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(str(float(v)) for v in value) + "]"
    return str(value)


def _yaw(deg: float, t) -> np.ndarray:
    from ssov_train.geometry.transforms import make_transform

    a = np.radians(deg)
    return make_transform(np.array([np.cos(a / 2), 0, 0, np.sin(a / 2)]), np.asarray(t, float))


def sweeps() -> tuple[dict[int, np.ndarray], np.ndarray, dict[int, np.ndarray]]:
    """({second: (N, 3) points in the lidar frame}, (N,) intensity, {second: odom <- lidar}, odometry path
    {stamp ns: odom <- base_link})."""
    from ssov_train.geometry.transforms import apply, invert
    from ssov_train.openvocab.query import load_scan
    from ssov_ros.tf_buffer import interpolate, xyz_quat_matrix

    xyz, intensity = load_scan(SWEEP)
    start, end = _yaw(0, (0, 0, 0)), _yaw(8, (4, 0.3, 0))
    # odometry at 10 Hz from 0.9 s to 2.1 s along the interpolated drive; the sweeps are taken at 1 s and 2 s
    path = {t: interpolate(start, end, min(max((t - S) / S, 0.0), 1.0))
            for t in (900_000_000 + i * 100_000_000 for i in range(13))}
    lidar_to_base = xyz_quat_matrix(LIDAR_TO_BASE)
    pose = {k: path[k * S] @ lidar_to_base for k in (1, 2)}
    world = apply(pose[1], xyz)
    points = {1: xyz, 2: apply(invert(pose[2]), world).astype(np.float32)}
    return points, intensity, pose, path


def _odometry(t_ns: int, pose: np.ndarray):
    from nav_msgs.msg import Odometry

    from ssov_train.geometry.transforms import matrix_to_quat

    m = Odometry()
    m.header.frame_id, m.child_frame_id = "odom", "base_link"
    m.header.stamp.sec, m.header.stamp.nanosec = divmod(int(t_ns), S)
    m.pose.pose.position.x, m.pose.pose.position.y, m.pose.pose.position.z = (float(v) for v in pose[:3, 3])
    o = m.pose.pose.orientation
    o.w, o.x, o.y, o.z = (float(v) for v in matrix_to_quat(pose[:3, :3]))
    return m


def _diagnostics(arrays) -> dict[str, str]:
    """The node's latest segmentation status values."""
    for arr in reversed(arrays):
        for status in arr.status:
            if status.name.endswith(": segmentation"):
                return {kv.key: kv.value for kv in status.values}
    return {}


def drive(context, in_process_node=None, startup_timeout: float = 180.0, timeout: float = 120.0,
          alive=lambda: True) -> dict[str, np.ndarray]:
    """Drive a node over DDS (``in_process_node``: spun here too; else a separate process, ``alive()`` while it
    runs) and collect its answers: ``labels_<k>``, ``scores_<k>``, ``similarity_<k>`` for sweeps k = 1, 2 and
    the node's ``frames_with_pose``."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import PointCloud2
    from std_msgs.msg import Header, String

    from ssov_ros.pointcloud import read_cloud, to_ros_cloud
    from ssov_ros.tf_buffer import stamp_ns

    points, intensity, _, path = sweeps()
    peer = rclpy.create_node("ssov_runtime_driver", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(peer)
    if in_process_node is not None:
        executor.add_node(in_process_node)

    def spin_until(predicate, limit: float, what: str) -> None:
        end = time.monotonic() + limit
        while not predicate():
            assert alive(), f"the node exited while waiting for {what}"
            assert time.monotonic() < end, f"timed out after {limit:.0f} s waiting for {what}"
            executor.spin_once(timeout_sec=0.05)

    outs, queries, diags = [], [], []
    try:
        peer.create_subscription(PointCloud2, f"{NODE}/output/points", outs.append, 10)
        peer.create_subscription(PointCloud2, f"{NODE}/output/query_points", queries.append, 10)
        peer.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
        cloud_pub = peer.create_publisher(PointCloud2, f"{NODE}/input/points", qos_profile_sensor_data)
        odom_pub = peer.create_publisher(type(_odometry(0, np.eye(4))), f"{NODE}/input/odometry", 50)
        query_pub = peer.create_publisher(String, f"{NODE}/query", 10)
        spin_until(lambda: all(p.get_subscription_count() > 0 for p in (cloud_pub, odom_pub, query_pub))
                   and peer.count_publishers(f"{NODE}/output/points") > 0, startup_timeout, "the node to start")

        # the odometry (the node's subscription is best effort: sent three times, within its depth of 50); the
        # node takes it before the query that follows
        for _ in range(3):
            for t, odom_pose in path.items():
                odom_pub.publish(_odometry(t, odom_pose))
        query_pub.publish(String(data=QUERY))
        spin_until(lambda: _diagnostics(diags).get("query") == QUERY, timeout, "the node to take the query")

        result: dict[str, np.ndarray] = {}
        for k in (1, 2):
            header = Header(frame_id="LIDAR_TOP")
            header.stamp.sec = k
            cloud_pub.publish(to_ros_cloud(header, {"x": points[k][:, 0], "y": points[k][:, 1],
                                                    "z": points[k][:, 2], "intensity": intensity}))

            def answered(msgs, k=k):
                return any(stamp_ns(m.header.stamp) == k * S for m in msgs)

            spin_until(lambda: answered(outs) and answered(queries), timeout, f"the answers to sweep {k}")
            out = [m for m in outs if stamp_ns(m.header.stamp) == k * S]
            query = [m for m in queries if stamp_ns(m.header.stamp) == k * S]
            assert len(out) == 1 and len(query) == 1, f"sweep {k} answered {len(out)} / {len(query)} times"
            columns = read_cloud(out[0], fields=("label", "score")).columns
            result[f"labels_{k}"] = columns["label"]
            result[f"scores_{k}"] = columns["score"]
            result[f"similarity_{k}"] = read_cloud(query[0], fields=("similarity",)).columns["similarity"]
        spin_until(lambda: _diagnostics(diags).get("frames") == "2", timeout, "the diagnostics of both sweeps")
        result["frames_with_pose"] = np.array(int(_diagnostics(diags)["frames_with_pose"]))
        return result
    finally:
        executor.remove_node(peer)
        if in_process_node is not None:
            executor.remove_node(in_process_node)
        executor.shutdown()
        peer.destroy_node()


def run_in_process(package: Path, domain_id: int) -> dict[str, np.ndarray]:
    """:func:`drive` with the node constructed in this process (its own rclpy context)."""
    import rclpy
    from rclpy.parameter import Parameter

    from ssov_ros.node import SegmenterNode

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id)
    node = None
    try:
        params = [Parameter("model.path", value=str(package))]
        params += [Parameter(k, value=v) for k, v in PARAMS.items()]
        node = SegmenterNode(context=context, parameter_overrides=params)
        return drive(context, in_process_node=node)
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.shutdown(context=context)
