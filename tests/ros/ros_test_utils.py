"""Shared helpers of the ROS tests: real point layouts written byte for byte, the real sample, a tiny model."""

from __future__ import annotations

import fcntl
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DOMAIN_LOCK_DIR = Path(tempfile.gettempdir()) / "ssov-ros-test-domains"
_domain_locks: list = []  # the held reservation's open file: the lock lasts as long as this process


def reserve_domain(first: int = 1, last: int = 101) -> int:
    """A ROS_DOMAIN_ID no other test process on this machine holds: the lowest id in [first, last] whose lock
    file this process could lock exclusively. The kernel drops the lock when the process ends (even if
    killed), so nothing is left to clean up. 101 is the highest id whose DDS ports stay below Linux's
    ephemeral port range."""
    DOMAIN_LOCK_DIR.mkdir(exist_ok=True)
    for domain in range(first, last + 1):
        lock = open(DOMAIN_LOCK_DIR / f"{domain}.lock", "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        _domain_locks.append(lock)
        return domain
    raise RuntimeError(f"no free ROS domain id in {first}..{last}: {last - first + 1} ROS test sessions hold them "
                       f"(locks in {DOMAIN_LOCK_DIR})")


# A DDS domain of this test process alone: other jobs on the machine (a demo, another test run) may run a node
# with the same name and topics on the default domain. Every ROS test (and the processes it starts) uses it.
DOMAIN_ID = reserve_domain()
DEMO_MODEL = REPO / "models" / "ssov_synthetic_minkunet34c_w025.pt"
OUT = "/ssov_segmenter/output/points"  # the node's labelled cloud, under its default name
S = 1_000_000_000  # nanoseconds per second, for stamps

# A hand-made camera and hand-placed points whose pixels were worked out by hand (not by the projection code).
# 64 x 48 px, fx = fy = 40, (cx, cy) = (32, 24). Lidar frame x forward, y left, z up; camera optical frame
# x right, y down, z forward: camera = R lidar + t with R = [[0, -1, 0], [0, 0, -1], [1, 0, 0]], t = (0.1, -0.2,
# 0.5), so a camera-frame point (xc, yc, zc) is the lidar point (zc - 0.5, 0.1 - xc, -0.2 - yc), and lands on
# (u, v) = (40 xc / zc + 32, 40 yc / zc + 24), in pixel (row, col) = (floor(v), floor(u)).
HAND_SIZE = (64, 48)  # width, height
HAND_K = np.array([[40.0, 0, 32], [0, 40, 24], [0, 0, 1]])
HAND_LIDAR_TO_CAMERA = np.array([[0.0, -1, 0, 0.1], [0, 0, -1, -0.2], [1, 0, 0, 0.5], [0, 0, 0, 1]])
# the same as x, y, z, qx, qy, qz, qw: R's quaternion (w, x, y, z) = (0.5, 0.5, -0.5, 0.5), from its trace
# (w = sqrt(1 + 0) / 2) and (R21 - R12, R02 - R20, R10 - R01) / 4w
HAND_LIDAR_TO_CAMERA_XYZ_QUAT = [0.1, -0.2, 0.5, 0.5, -0.5, 0.5, 0.5]
HAND_POINTS = np.array([
    [9.5, -0.025, -0.325],  # 0: camera (0.125, 0.125, 10) -> (u, v) = (32.5, 24.5) -> pixel (24, 32)
    [7.5, -2.0, 0.7],  # 1: camera (2.1, -0.9, 8) -> (42.5, 19.5) -> pixel (19, 42)
    [19.5, -0.65, -0.45],  # 2: camera (0.75, 0.25, 20) -> (33.5, 24.5) -> pixel (24, 33): next to point 0 and
    #    10 m behind it (20 > 10 * 1.1 + 0.5): hidden by the z-buffer (1 px cells at 64 px width)
    [-5.5, 0.1, -0.2],  # 3: camera (0, 0, -5): behind the camera
    [9.5, -9.525, -0.325],  # 4: camera (9.625, 0.125, 10) -> u = 70.5: right of the image
    [0.3, 0.53, 0.07],  # 5: camera (-0.43, -0.27, 0.8): nearer than the 1 m minimum depth
], dtype=np.float32)
HAND_PIXELS = {0: (24, 32), 1: (19, 42), 2: (24, 33)}  # (row, col) of the points that land in the image


def hand_image() -> np.ndarray:
    """A 48 x 64 RGB background no palette colour matches: (5 row, 3 col, 200)."""
    rows, cols = np.mgrid[0:48, 0:64]
    return np.stack([rows * 5, cols * 3, np.full_like(rows, 200)], -1).astype(np.uint8)


# (name, offset, numpy type) per layout, as drivers publish them; point_step given separately (padding).
LAYOUTS: dict[str, tuple[list[tuple[str, int, str]], int]] = {
    "xyz": ([("x", 0, "f4"), ("y", 4, "f4"), ("z", 8, "f4")], 12),
    # PCL PointXYZI: 4 bytes of padding after z, 12 after intensity
    "pcl_xyzi": ([("x", 0, "f4"), ("y", 4, "f4"), ("z", 8, "f4"), ("intensity", 16, "f4")], 32),
    "nuscenes": ([("x", 0, "f4"), ("y", 4, "f4"), ("z", 8, "f4"), ("intensity", 12, "f4"), ("ring", 16, "f4")], 20),
    # Autoware PointXYZIRC
    "xyzirc": ([("x", 0, "f4"), ("y", 4, "f4"), ("z", 8, "f4"), ("intensity", 12, "u1"), ("return_type", 13, "u1"),
                ("channel", 14, "u2")], 16),
    # Autoware PointXYZIRCAEDT
    "xyzircaedt": ([("x", 0, "f4"), ("y", 4, "f4"), ("z", 8, "f4"), ("intensity", 12, "u1"),
                    ("return_type", 13, "u1"), ("channel", 14, "u2"), ("azimuth", 16, "f4"),
                    ("elevation", 20, "f4"), ("distance", 24, "f4"), ("time_stamp", 28, "u4")], 32),
    # float64 coordinates (some simulators)
    "xyz_f64": ([("x", 0, "f8"), ("y", 8, "f8"), ("z", 16, "f8"), ("intensity", 24, "u2")], 32),
    # every field float64 (simulators, converted bags)
    "all_f64": ([("x", 0, "f8"), ("y", 8, "f8"), ("z", 16, "f8"), ("intensity", 24, "f8")], 32),
}
DATATYPE = {"i1": 1, "u1": 2, "i2": 3, "u2": 4, "i4": 5, "u4": 6, "f4": 7, "f8": 8}


def encode(layout: str, xyz: np.ndarray, intensity: np.ndarray, big_endian: bool = False, height: int = 1,
           row_padding: int = 0) -> SimpleNamespace:
    """A PointCloud2-shaped object (duck-typed) holding xyz/intensity in the given driver layout."""
    fields, step = LAYOUTS[layout]
    order = ">" if big_endian else "<"
    dtype = np.dtype({"names": [f[0] for f in fields], "formats": [order + f[2] for f in fields],
                      "offsets": [f[1] for f in fields], "itemsize": step})
    n = len(xyz)
    arr = np.zeros(n, dtype=dtype)
    for i, c in enumerate("xyz"):
        arr[c] = xyz[:, i]
    for name, _, fmt in fields:
        if name == "intensity":
            arr[name] = intensity
        elif name in ("ring", "channel"):
            arr[name] = np.arange(n) % 32
        elif name == "distance":
            arr[name] = np.linalg.norm(xyz, axis=1)
    width = n // height
    rows = arr.tobytes()
    row_step = width * step + row_padding
    data = b"".join(rows[r * width * step:(r + 1) * width * step] + b"\xab" * row_padding for r in range(height))
    return SimpleNamespace(
        header=SimpleNamespace(frame_id="lidar", stamp=SimpleNamespace(sec=1, nanosec=0)),
        height=height, width=width, is_bigendian=big_endian, point_step=step, row_step=row_step,
        fields=[SimpleNamespace(name=f[0], offset=f[1], datatype=DATATYPE[f[2]], count=1) for f in fields],
        data=data, is_dense=False)


def to_rclpy(ns: SimpleNamespace, stamp_ns: int = 1_000_000_000, frame_id: str = "lidar"):
    """The same cloud as an rclpy sensor_msgs/PointCloud2."""
    import array

    from sensor_msgs.msg import PointCloud2, PointField

    msg = PointCloud2()
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    msg.height, msg.width = ns.height, ns.width
    msg.fields = [PointField(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count) for f in ns.fields]
    msg.is_bigendian, msg.point_step, msg.row_step = ns.is_bigendian, ns.point_step, ns.row_step
    payload = array.array("B")
    payload.frombytes(bytes(ns.data))
    msg.data = payload
    msg.is_dense = False
    return msg


def real_sample():
    from ssov_train.data.sample import SampleReader

    reader = SampleReader(REPO / "data" / "nuscenes_sample")
    return reader.load(reader.split_tokens()[0])


def make_tiny_model(path: Path, normalized: bool | None = None) -> Path:
    """A randomly initialised MinkUNet18 at width 1/16 with the demo model's classes and voxel grid: the node's
    whole path (parse -> voxelize -> network -> publish) in ~10 ms per small cloud, for fuzzing.  Its input is
    the demo model's, or ``normalized``: True = per-cloud normalised intensity, False = raw intensity."""
    import torch

    from ssov_train.features import IntensityNormalization
    from ssov_train.models.minkunet import MinkUNet, MinkUNetConfig
    from ssov_train.training.checkpoint import load_checkpoint, save_checkpoint

    demo = load_checkpoint(DEMO_MODEL)
    ckpt = {k: demo[k] for k in ("class_names", "palette", "vocabulary", "feature_dim", "stage", "voxel",
                                 "input_fields")}
    ckpt["input_normalization"] = demo.get("input_normalization")
    if normalized is not None:
        ckpt["input_fields"] = ["normalized_intensity"] if normalized else ["intensity"]
        ckpt["input_normalization"] = IntensityNormalization().to_dict() if normalized else None
    model_cfg = dict(demo["model"], arch="MinkUNet18", width=0.0625,
                     in_channels=2 if ckpt["input_fields"] == ["normalized_intensity"] else 1)
    torch.manual_seed(0)
    net = MinkUNet(MinkUNetConfig(**model_cfg))
    ckpt.update(model=model_cfg, state_dict=net.state_dict())
    return save_checkpoint(path, ckpt)


class Harness:
    """The node plus a peer node (publishers / listeners) in one executor of a private rclpy context.  The model
    is the demo checkpoint unless ``overrides`` name one (the default, the exported package, may not exist); an
    override of None leaves that parameter at the node's own default.  ``threads`` > 1 spins a multi-threaded
    executor, as the node's main() does."""

    def __init__(self, overrides: dict | None = None, threads: int = 1):
        import rclpy
        from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
        from rclpy.parameter import Parameter

        from ssov_ros.node import SegmenterNode

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=DOMAIN_ID)
        overrides = {"model.path": str(DEMO_MODEL), **(overrides or {})}
        params = [Parameter(k, value=v) for k, v in overrides.items() if v is not None]
        try:
            self.node = SegmenterNode(context=self.context, parameter_overrides=params)
        except Exception:
            rclpy.shutdown(context=self.context)
            raise
        self.peer = rclpy.create_node("ssov_test_peer", context=self.context)
        self.executor = (MultiThreadedExecutor(threads, context=self.context) if threads > 1
                         else SingleThreadedExecutor(context=self.context))
        self.executor.add_node(self.node)
        self.executor.add_node(self.peer)
        self.received: dict[str, list] = {}

    def listen(self, topic: str, msg_type, qos=10) -> list:
        self.received[topic] = []
        self.peer.create_subscription(msg_type, topic, self.received[topic].append, qos)
        return self.received[topic]

    def publisher(self, topic: str, msg_type, qos=10):
        return self.peer.create_publisher(msg_type, topic, qos)

    # Generous waits: a machine running two test suites at once may take many seconds for one frame; a healthy
    # run returns as soon as the condition holds.
    def spin_until(self, predicate, timeout: float = 60.0) -> bool:
        import time

        end = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > end:
                return False
            self.executor.spin_once(timeout_sec=0.05)
        return True

    def wait_matched(self, pub, count: int = 1, timeout: float = 60.0) -> bool:
        return self.spin_until(lambda: pub.get_subscription_count() >= count, timeout)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        self.peer.destroy_node()
        rclpy.shutdown(context=self.context)
