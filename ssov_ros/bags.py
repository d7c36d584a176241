"""rosbag2 bags without ROS (the `rosbags` library): reading, writing, the replay schedule, and the shipped bags.

Everything here runs without rclpy; `replay.py` and `record.py` add the ROS side.  Bags are written as
rosbag2 version 9 directories with MCAP storage and zstd-compressed chunks (what `ros2 bag record -s mcap
--storage-preset-profile zstd_fast` writes), atomically: a bag directory only appears once complete.

`python -m ssov_ros.bags --out rosbags` (or `ssov-make-bags`) regenerates the two shipped bags:

* ``nuscenes_sample``: the real nuScenes keyframe of ``data/nuscenes_sample`` as recorded (the sweep in its
  5-field float32 layout, the six JPEGs as they are, CameraInfo, the calibration on /tf_static and the ego
  pose at every sensor time on /tf);
* ``synthetic_street``: 40 sweeps at 10 Hz of a synthetic street (``ssov_train.data.synthetic``), with six
  small cameras, /odom and /tf.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from ssov_train.errors import DataError, SsovError

REPO = Path(__file__).resolve().parents[1]
CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")
LIDAR_TOPIC = "/lidar_top/points"
ODOM_TOPIC = "/odom"


def image_topic(camera: str) -> str:
    return f"/{camera.lower()}/image_raw/compressed"


def camera_info_topic(camera: str) -> str:
    return f"/{camera.lower()}/camera_info"


# ---------------------------------------------------------------------------------------------------- QoS

@dataclass(frozen=True)
class QosSpec:
    """The part of a QoS profile that decides matching and late joining (what replay and record reproduce)."""

    reliability: str = "reliable"  # reliable | best_effort
    durability: str = "volatile"  # volatile | transient_local
    depth: int = 10

    def __post_init__(self) -> None:
        if self.reliability not in ("reliable", "best_effort"):
            raise ValueError(f"QoS reliability {self.reliability!r}: expected reliable or best_effort")
        if self.durability not in ("volatile", "transient_local"):
            raise ValueError(f"QoS durability {self.durability!r}: expected volatile or transient_local")
        if self.depth < 1:
            raise ValueError(f"QoS depth {self.depth} < 1")

    def to_rosbags(self):
        from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

        zero = QosTime(0, 0)  # 0 = the rmw default (infinite) for deadline, lifespan and lease duration
        return Qos(QosHistory.KEEP_LAST, self.depth, QosReliability[self.reliability.upper()],
                   QosDurability[self.durability.upper()], zero, zero, QosLiveliness.AUTOMATIC, zero, False)

    @classmethod
    def from_rosbags(cls, profiles: Sequence) -> "QosSpec":
        """One spec for a topic's recorded publishers: best effort if any was, transient local only if all were."""
        if not profiles:
            return cls()
        best_effort = any(p.reliability.name == "BEST_EFFORT" for p in profiles)
        latched = all(p.durability.name == "TRANSIENT_LOCAL" for p in profiles)
        depth = max((int(p.depth) for p in profiles), default=10) or 10
        return cls("best_effort" if best_effort else "reliable", "transient_local" if latched else "volatile", depth)


SENSOR_QOS = QosSpec("best_effort", "volatile", 5)  # rclpy qos_profile_sensor_data
RELIABLE_QOS = QosSpec("reliable", "volatile", 10)
LATCHED_QOS = QosSpec("reliable", "transient_local", 1)  # /tf_static


def default_qos(topic: str, msgtype: str) -> QosSpec:
    """QoS a topic gets when its recorded profile is unknown: /tf_static latched, sensor data best effort."""
    if topic == "/tf_static":
        return LATCHED_QOS
    if msgtype in ("sensor_msgs/msg/PointCloud2", "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"):
        return SENSOR_QOS
    return RELIABLE_QOS


# ------------------------------------------------------------------------------------------ reading bags

@dataclass(frozen=True)
class TopicInfo:
    name: str
    msgtype: str
    count: int
    qos: QosSpec


@dataclass(frozen=True)
class BagInfo:
    path: Path
    topics: dict[str, TopicInfo]
    start_ns: int
    end_ns: int
    message_count: int

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


def _bag_error(path: Path, exc: BaseException) -> DataError:
    reason = str(exc) or type(exc).__name__
    return DataError(f"bag {path}: cannot be read ({reason})")


def _open_reader(path: Path):
    from rosbags.rosbag2 import Reader

    if not path.exists():
        raise DataError(f"bag {path}: not found")
    if not (path / "metadata.yaml").is_file():
        raise DataError(f"bag {path}: not a rosbag2 directory (no metadata.yaml)")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # rosbags raises ReaderError, yaml, sqlite and struct errors for broken bags
        raise _bag_error(path, exc) from None
    return reader


@contextlib.contextmanager
def _reading(path: Path) -> Iterator:
    """An open reader of the bag at ``path``; whatever a broken bag raises while it is read becomes one
    DataError naming the bag, and the reader is closed in every case."""
    reader = _open_reader(path)
    try:
        yield reader
    except DataError:
        raise
    except Exception as exc:  # rosbags raises ReaderError, yaml, sqlite, zstd and struct errors for broken bags
        raise _bag_error(path, exc) from None
    finally:
        reader.close()


def bag_info(path: str | Path) -> BagInfo:
    """Topics (type, count, recorded QoS), time span and message count of a bag; DataError if unreadable."""
    path = Path(path)
    with _reading(path) as reader:
        topics: dict[str, TopicInfo] = {}
        for conn in reader.connections:
            profiles = getattr(conn.ext, "offered_qos_profiles", None)  # absent in ROS 1 / older bags
            # /tf_static is latched whatever it was recorded with: a late subscriber still needs the calibration
            latched = conn.topic == "/tf_static"
            qos = QosSpec.from_rosbags(profiles) if profiles and not latched else default_qos(conn.topic, conn.msgtype)
            prev = topics.get(conn.topic)
            if prev is not None and prev.msgtype != conn.msgtype:
                raise DataError(f"bag {path}: topic {conn.topic} has two types ({prev.msgtype}, {conn.msgtype})")
            topics[conn.topic] = TopicInfo(conn.topic, conn.msgtype, (prev.count if prev else 0) + conn.msgcount, qos)
        return BagInfo(path, topics, reader.start_time, reader.end_time, reader.message_count)


def read_messages(path: str | Path, topics: Optional[Iterable[str]] = None) -> Iterator[tuple[str, str, int, bytes]]:
    """(topic, msgtype, receive time ns, serialized CDR bytes) in time order; DataError if the bag is broken.

    ``topics`` selects topics; naming one the bag does not have is an error (a typo would otherwise replay
    nothing).
    """
    path = Path(path)
    with _reading(path) as reader:
        conns = reader.connections
        if topics is not None:
            wanted = set(topics)
            missing = sorted(wanted - {c.topic for c in conns})
            if missing:
                raise DataError(f"bag {path}: no topic {', '.join(missing)} (topics: "
                                f"{', '.join(sorted({c.topic for c in conns}))})")
            conns = [c for c in conns if c.topic in wanted]
        for conn, t_ns, raw in reader.messages(connections=conns):
            yield conn.topic, conn.msgtype, int(t_ns), bytes(raw)


def first_message(path: str | Path, topic: str):
    """(receive time ns, deserialized message) of the first message on ``topic``; DataError if there is none."""
    messages = read_messages(path, [topic])
    try:
        for _, msgtype, t_ns, raw in messages:
            return t_ns, deserialize(raw, msgtype)
    finally:
        messages.close()
    raise DataError(f"bag {path}: no message on {topic}")


def replay_schedule(messages: Iterable[tuple[str, str, int, bytes]], rate: float
                    ) -> Iterator[tuple[float, tuple[str, str, int, bytes]]]:
    """(seconds after the start at which it is due, message) for each message of a time-ordered stream, when
    replaying at ``rate`` x real time: the original spacing, scaled."""
    if not rate > 0:
        raise ValueError(f"replay rate must be > 0, got {rate}")
    t_first = None
    for msg in messages:
        t_first = msg[2] if t_first is None else t_first
        yield (msg[2] - t_first) / 1e9 / rate, msg


# ------------------------------------------------------------------------------------------ writing bags

class BagWriter:
    """Write a rosbag2 (MCAP, zstd chunks) into ``<path>`` atomically: built in a hidden sibling directory
    and renamed onto ``path`` on a clean close; an exception inside the ``with`` block leaves nothing."""

    def __init__(self, path: str | Path, overwrite: bool = False, compress: bool = True):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise DataError(f"bag {self.path}: already exists (choose another path or overwrite)")
        self.overwrite = overwrite
        self.compress = compress
        # Built as <parent>/.<name>.partial/<name>: the storage file inside keeps the bag's own name.
        self._tmp_root = self.path.parent / f".{self.path.name}.partial"
        self._tmp = self._tmp_root / self.path.name
        self._writer = None
        self._connections: dict[str, object] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> "BagWriter":
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.rosbag2.enums import CompressionFormat, CompressionMode

        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._tmp_root.exists():
            shutil.rmtree(self._tmp_root)  # left by a killed run
        self._tmp_root.mkdir()
        self._writer = Writer(self._tmp, version=9, storage_plugin=StoragePlugin.MCAP)
        if self.compress:
            self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        self._writer.open()
        return self

    def add_topic(self, topic: str, msgtype: str, qos: Optional[QosSpec] = None) -> None:
        from rosbags.typesys.store import TypesysError

        if topic in self._connections:
            raise ValueError(f"topic {topic} added twice")
        try:
            profile = (qos or default_qos(topic, msgtype)).to_rosbags()
            self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=typestore(),
                                                                   offered_qos_profiles=[profile])
        except (KeyError, TypesysError) as exc:
            raise DataError(f"bag {self.path}: message type {msgtype} of {topic} is unknown to the ROS 2 kilted "
                            f"type store ({exc})") from None
        self.counts[topic] = 0

    def write(self, topic: str, t_ns: int, raw: bytes) -> None:
        self._writer.write(self._connections[topic], int(t_ns), raw)
        self.counts[topic] += 1

    def write_msg(self, topic: str, t_ns: int, msg) -> None:
        self.write(topic, t_ns, serialize(msg))

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            try:
                self._writer.close()
            finally:
                shutil.rmtree(self._tmp_root, ignore_errors=True)
            return
        self._writer.close()
        if self.path.exists() and self.overwrite:
            shutil.rmtree(self.path)
        self._tmp.rename(self.path)
        self._tmp_root.rmdir()


# ---------------------------------------------------------------------------------- message construction

@lru_cache(maxsize=1)
def typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def _t(name: str):
    return typestore().types[name]


def serialize(msg) -> bytes:
    return bytes(typestore().serialize_cdr(msg, msg.__msgtype__))


def deserialize(raw: bytes, msgtype: str):
    return typestore().deserialize_cdr(raw, msgtype)


def header(t_ns: int, frame_id: str):
    stamp = _t("builtin_interfaces/msg/Time")(sec=int(t_ns // 1_000_000_000), nanosec=int(t_ns % 1_000_000_000))
    return _t("std_msgs/msg/Header")(stamp=stamp, frame_id=frame_id)


def cloud_message(t_ns: int, frame_id: str, columns: dict[str, np.ndarray]):
    """A rosbags PointCloud2 (unorganised, little-endian) from (N,) columns, laid out by ``pack_cloud``."""
    from .pointcloud import pack_cloud

    fields, point_step, data = pack_cloud(columns)
    n = len(next(iter(columns.values())))
    xyz_finite = all(bool(np.isfinite(columns[c]).all()) for c in "xyz" if c in columns)
    point_field = _t("sensor_msgs/msg/PointField")
    return _t("sensor_msgs/msg/PointCloud2")(
        header=header(t_ns, frame_id), height=1, width=n,
        fields=[point_field(name=name, offset=offset, datatype=datatype, count=count)
                for name, offset, datatype, count in fields],
        is_bigendian=False, point_step=point_step, row_step=point_step * n,
        data=np.frombuffer(data, dtype=np.uint8), is_dense=xyz_finite)


def compressed_image_message(t_ns: int, frame_id: str, jpeg: bytes):
    return _t("sensor_msgs/msg/CompressedImage")(header=header(t_ns, frame_id), format="jpeg",
                                                 data=np.frombuffer(jpeg, dtype=np.uint8))


def camera_info_message(t_ns: int, frame_id: str, width: int, height: int, intrinsics: np.ndarray):
    """Pinhole CameraInfo of an undistorted (rectified) camera: D = 0, R = I, P = [K | 0]."""
    k = np.asarray(intrinsics, dtype=np.float64).reshape(3, 3)
    roi = _t("sensor_msgs/msg/RegionOfInterest")(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return _t("sensor_msgs/msg/CameraInfo")(
        header=header(t_ns, frame_id), height=int(height), width=int(width), distortion_model="plumb_bob",
        d=np.zeros(5), k=k.ravel(), r=np.eye(3).ravel(), p=np.c_[k, np.zeros(3)].ravel(),
        binning_x=0, binning_y=0, roi=roi)


def _pose_parts(matrix: np.ndarray):
    from ssov_train.geometry.transforms import matrix_to_quat

    m = np.asarray(matrix, dtype=np.float64)
    w, x, y, z = matrix_to_quat(m[:3, :3])
    return (_t("geometry_msgs/msg/Vector3")(x=float(m[0, 3]), y=float(m[1, 3]), z=float(m[2, 3])),
            _t("geometry_msgs/msg/Quaternion")(x=float(x), y=float(y), z=float(z), w=float(w)))


def transform_message(t_ns: int, parent: str, child: str, child_to_parent: np.ndarray):
    """geometry_msgs/TransformStamped: ``child_to_parent`` maps points in ``child`` to ``parent`` (tf's
    parent -> child transform)."""
    translation, rotation = _pose_parts(child_to_parent)
    return _t("geometry_msgs/msg/TransformStamped")(
        header=header(t_ns, parent), child_frame_id=child,
        transform=_t("geometry_msgs/msg/Transform")(translation=translation, rotation=rotation))


def tf_message(transforms: list):
    return _t("tf2_msgs/msg/TFMessage")(transforms=transforms)


def odometry_message(t_ns: int, frame: str, child: str, pose: np.ndarray, linear: np.ndarray, angular_z: float):
    """nav_msgs/Odometry: ``pose`` base -> odom, twist in the base frame (planar motion)."""
    translation, rotation = _pose_parts(pose)
    point = _t("geometry_msgs/msg/Point")(x=translation.x, y=translation.y, z=translation.z)
    vec = _t("geometry_msgs/msg/Vector3")
    covariance = np.diag([0.01, 0.01, 0.01, 0.001, 0.001, 0.001]).ravel()
    return _t("nav_msgs/msg/Odometry")(
        header=header(t_ns, frame), child_frame_id=child,
        pose=_t("geometry_msgs/msg/PoseWithCovariance")(
            pose=_t("geometry_msgs/msg/Pose")(position=point, orientation=rotation), covariance=covariance),
        twist=_t("geometry_msgs/msg/TwistWithCovariance")(
            twist=_t("geometry_msgs/msg/Twist")(linear=vec(x=float(linear[0]), y=float(linear[1]), z=0.0),
                                                angular=vec(x=0.0, y=0.0, z=float(angular_z))),
            covariance=covariance))


# --------------------------------------------------------------------------- calibration as node params

def calibration_params(path: str | Path, lidar_topic: str = LIDAR_TOPIC) -> dict:
    """A bag's calibration as ssov_segmenter parameters, for hosts without tf2_msgs (no PyPI wheel), where the
    node cannot read /tf_static: ``cameras.names`` (cameras with a CompressedImage topic), ``cameras.transport``,
    ``cameras.lidar_to_camera`` and ``temporal.sensor_to_base``.

    lidar -> camera goes through the ego pose at the sweep's and at the camera's first timestamps when /tf has
    them (the full nuScenes chain: cameras expose up to 43 ms before the sweep while the car moves).
    """
    from ssov_train.geometry.transforms import invert

    from .tf_buffer import TransformBuffer, matrix_xyz_quat, stamp_ns

    info = bag_info(path)
    if lidar_topic not in info.topics:
        raise DataError(f"bag {path}: no lidar topic {lidar_topic}")
    cams = [c for c in CAMERAS if image_topic(c) in info.topics and camera_info_topic(c) in info.topics]
    buf = TransformBuffer(cache_ns=1 << 62, extrapolation_ns=0)
    first: dict[str, int] = {}  # topic -> first stamp
    frames: dict[str, str] = {}  # topic -> header.frame_id
    wanted = [lidar_topic, *(camera_info_topic(c) for c in cams)]
    tf_topics = [t for t in ("/tf_static", "/tf") if t in info.topics]
    for topic, msgtype, t_ns, raw in read_messages(path, tf_topics + wanted):
        if topic in tf_topics:
            buf.add_tf_message(deserialize(raw, msgtype), static=topic == "/tf_static")
        elif topic not in first:
            msg = deserialize(raw, msgtype)
            first[topic] = stamp_ns(msg.header.stamp)
            frames[topic] = msg.header.frame_id
    if lidar_topic not in first:
        raise DataError(f"bag {path}: no message on {lidar_topic}")
    lidar_frame, t_lidar = frames[lidar_topic], first[lidar_topic]
    base = BASE_FRAME if BASE_FRAME in buf.frames() else None
    params: dict = {"cameras.names": cams, "cameras.transport": "compressed"}
    lidar_base = buf.lookup(base or lidar_frame, lidar_frame, t_lidar)
    if base is not None and lidar_base is not None:
        params["temporal.sensor_to_base"] = matrix_xyz_quat(lidar_base)
    # base(t_cam) <- base(t_lidar) through the fixed frame when /tf has the ego poses, else the identity
    root = next((f for f in ("map", "odom") if base and buf.lookup(f, base, t_lidar) is not None), None)
    at_lidar = buf.lookup(root, base, t_lidar) if root is not None else None
    flat: list[float] = []
    for cam in cams:
        topic = camera_info_topic(cam)
        cam_frame, t_cam = frames[topic], first[topic]
        motion = np.eye(4)
        if root is not None:
            at_cam = buf.lookup(root, base, t_cam)
            if at_cam is not None:
                motion = invert(at_cam) @ at_lidar
        cam_base = buf.lookup(base or lidar_frame, cam_frame, t_cam)
        if cam_base is None or lidar_base is None:
            raise DataError(f"bag {path}: /tf_static has no transform between {lidar_frame} and {cam_frame}")
        flat += matrix_xyz_quat(invert(cam_base) @ motion @ lidar_base)
    params["cameras.lidar_to_camera"] = flat
    return params


# ------------------------------------------------------------------------------------- the shipped bags

BASE_FRAME, LIDAR_FRAME = "base_link", "lidar_top"


def camera_frame(camera: str) -> str:
    """Optical frame of a camera (z forward, x right, y down), as nuScenes calibrates them."""
    return camera.lower()


def _add_sensor_topics(w: BagWriter, cameras: Sequence[str]) -> None:
    w.add_topic("/tf_static", "tf2_msgs/msg/TFMessage", LATCHED_QOS)
    w.add_topic("/tf", "tf2_msgs/msg/TFMessage", RELIABLE_QOS)
    w.add_topic(LIDAR_TOPIC, "sensor_msgs/msg/PointCloud2", SENSOR_QOS)
    for cam in cameras:
        w.add_topic(image_topic(cam), "sensor_msgs/msg/CompressedImage", SENSOR_QOS)
        w.add_topic(camera_info_topic(cam), "sensor_msgs/msg/CameraInfo", SENSOR_QOS)


def make_sample_bag(out: str | Path, sample_dir: str | Path = REPO / "data" / "nuscenes_sample",
                    overwrite: bool = False) -> Path:
    """The real nuScenes keyframe as a bag: lidar in its 5-field float32 layout, JPEGs untouched, calibration
    on /tf_static (sensor -> base_link), the ego pose in ``map`` at the sweep's and each camera's time on /tf.

    The camera-time ego poses are recovered from sample.json's ``lidar2cam`` (which carries the ego motion
    between sweep and exposure), so a tf-based projection reproduces the full nuScenes calibration chain.
    """
    from ssov_train.data.sample import SampleReader
    from ssov_train.geometry.transforms import invert

    reader = SampleReader(sample_dir)
    frame = reader.load(reader.token)
    t_lidar = frame.timestamp_us * 1000
    ego_lidar = np.asarray(frame.ego_to_global, dtype=np.float64)
    static = [transform_message(t_lidar, BASE_FRAME, LIDAR_FRAME, frame.lidar_to_ego)]
    dynamic = [(t_lidar, ego_lidar)]
    for cam in frame.cameras:
        cam_to_ego = reader.camera_to_ego(cam.name)
        static.append(transform_message(t_lidar, BASE_FRAME, camera_frame(cam.name), cam_to_ego))
        # lidar2cam = inv(cam2ego) inv(E_cam) E_lidar lidar2ego
        #   =>  E_cam = E_lidar inv(cam2ego lidar2cam inv(lidar2ego))
        ego_cam = ego_lidar @ invert(cam_to_ego @ cam.lidar_to_camera @ invert(frame.lidar_to_ego))
        dynamic.append((cam.timestamp_us * 1000, ego_cam))
    t0 = min(t for t, _ in dynamic)
    ring = frame.ring.astype(np.float32) if frame.ring is not None else np.zeros(len(frame.points), np.float32)
    with BagWriter(out, overwrite=overwrite) as w:
        _add_sensor_topics(w, [c.name for c in frame.cameras])
        w.write_msg("/tf_static", t0, tf_message(static))
        for t_ns, pose in sorted(dynamic, key=lambda d: d[0]):
            w.write_msg("/tf", t_ns, tf_message([transform_message(t_ns, "map", BASE_FRAME, pose)]))
        for cam in frame.cameras:
            t_cam = cam.timestamp_us * 1000
            try:
                jpeg = Path(cam.image_path).read_bytes()
            except FileNotFoundError:
                raise DataError(f"camera image missing: {cam.image_path}") from None
            w.write_msg(camera_info_topic(cam.name), t_cam,
                        camera_info_message(t_cam, camera_frame(cam.name), cam.width, cam.height, cam.intrinsics))
            w.write_msg(image_topic(cam.name), t_cam, compressed_image_message(t_cam, camera_frame(cam.name), jpeg))
        points = frame.points.astype(np.float32)
        w.write_msg(LIDAR_TOPIC, t_lidar, cloud_message(t_lidar, LIDAR_FRAME, {
            "x": points[:, 0], "y": points[:, 1], "z": points[:, 2],
            "intensity": frame.intensity.astype(np.float32), "ring": ring}))
    return Path(out)


SYNTHETIC_SEED = 2026  # the demo world's seed: streets the demo model was not trained on
SYNTHETIC_START_NS = 1_600_000_000_000_000_000  # the synthetic worlds' clock (2020-09-13)


def make_synthetic_bag(out: str | Path, seed: int = SYNTHETIC_SEED, sweeps: int = 40, rate_hz: float = 10.0,
                       image_size: tuple[int, int] = (320, 180), jpeg_quality: int = 75,
                       azimuth_steps: int = 542, cameras: bool = True, odom_rate_hz: float = 50.0,
                       overwrite: bool = False) -> Path:
    """A synthetic street (``ssov_train.data.synthetic``: the real nuScenes rig, its camera time offsets) as
    ``sweeps`` lidar sweeps at ``rate_hz`` with small cameras, /odom (odom -> base_link) and /tf.

    The lidar keeps the HDL-32E's 32 rings at ``azimuth_steps`` firings per turn (542 = half the nuScenes
    sweep's 1,084) and the images are small, so the bag stays small enough to ship.
    """
    from tqdm import tqdm

    from ssov_train.data.synthetic.raycast import PinholeGrid, SpinningGrid
    from ssov_train.data.synthetic.rig import CAMERA_SPECS, LIDAR_ELEVATIONS_DEG, lidar_to_ego
    from ssov_train.data.synthetic.sensors import render_camera, scan_lidar
    from ssov_train.data.synthetic.world import SAMPLE_PERIOD_S, build_scene
    from ssov_train.geometry.transforms import invert
    import cv2

    if sweeps < 1 or rate_hz <= 0:
        raise ValueError(f"need sweeps >= 1 and rate_hz > 0, got {sweeps}, {rate_hz}")
    duration = (sweeps - 1) / rate_hz
    scene = build_scene(seed, 0, int(np.ceil(duration / SAMPLE_PERIOD_S)) + 2)  # covers the sweeps' time span
    lidar = SpinningGrid(LIDAR_ELEVATIONS_DEG, azimuth_steps)
    width, height = image_size
    grids = {spec.name: PinholeGrid(spec.intrinsics(width, height), width, height) for spec in CAMERA_SPECS}
    t_first = min(spec.time_offset_s for spec in CAMERA_SPECS) if cameras else 0.0
    start = scene.ego_pose(0.0)

    def ns(t: float) -> int:
        return SYNTHETIC_START_NS + int(round((t - t_first) * 1e9))

    def odom_pose(t: float) -> np.ndarray:  # base_link -> odom, odom = the ego pose at the first sweep
        return invert(start) @ scene.ego_pose(t)

    with BagWriter(out, overwrite=overwrite) as w:
        _add_sensor_topics(w, [s.name for s in CAMERA_SPECS] if cameras else [])
        w.add_topic(ODOM_TOPIC, "nav_msgs/msg/Odometry", RELIABLE_QOS)
        static = [transform_message(ns(t_first), BASE_FRAME, LIDAR_FRAME, lidar_to_ego())]
        static += [transform_message(ns(t_first), BASE_FRAME, camera_frame(s.name), s.to_ego) for s in CAMERA_SPECS]
        w.write_msg("/tf_static", ns(t_first), tf_message(static))
        dt = 1.0 / odom_rate_hz
        for t in np.arange(t_first, duration + dt / 2, dt):
            pose = odom_pose(t)
            ahead = invert(pose) @ odom_pose(t + 1e-3)  # motion over 1 ms in the base frame
            linear, yaw_rate = ahead[:2, 3] / 1e-3, np.arctan2(ahead[1, 0], ahead[0, 0]) / 1e-3
            w.write_msg(ODOM_TOPIC, ns(t), odometry_message(ns(t), "odom", BASE_FRAME, pose, linear, yaw_rate))
            w.write_msg("/tf", ns(t), tf_message([transform_message(ns(t), "odom", BASE_FRAME, pose)]))
        for k in tqdm(range(sweeps), desc="synthetic bag", unit="sweep"):
            t = k / rate_hz
            rng = np.random.default_rng([seed, 0, k])
            if cameras:
                for spec in CAMERA_SPECS:
                    t_cam = t + spec.time_offset_s  # cameras expose slightly before the sweep, as in nuScenes
                    image = render_camera(scene, spec, grids[spec.name], t_cam, rng)
                    ok, jpeg = cv2.imencode(".jpg", image.rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
                    if not ok:
                        raise OSError(f"JPEG encoding failed for {spec.name}")
                    frame_id = camera_frame(spec.name)
                    w.write_msg(camera_info_topic(spec.name), ns(t_cam), camera_info_message(
                        ns(t_cam), frame_id, width, height, spec.intrinsics(width, height)))
                    w.write_msg(image_topic(spec.name), ns(t_cam),
                                compressed_image_message(ns(t_cam), frame_id, jpeg.tobytes()))
            pts = scan_lidar(scene, lidar, t, rng).points
            w.write_msg(LIDAR_TOPIC, ns(t), cloud_message(ns(t), LIDAR_FRAME, {
                "x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2], "intensity": pts[:, 3], "ring": pts[:, 4]}))
    return Path(out)


SHIPPED = {"nuscenes_sample": make_sample_bag, "synthetic_street": make_synthetic_bag}


def shipped_bags(root: str | Path = REPO / "rosbags") -> list[Path]:
    return [Path(root) / name for name in SHIPPED]


def describe(path: str | Path) -> str:
    info = bag_info(path)
    size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    lines = [f"{path}: {info.message_count} messages, {info.duration_s:.2f} s, {size / 1e6:.2f} MB"]
    for t in sorted(info.topics.values(), key=lambda t: t.name):
        lines.append(f"  {t.name:42s} {t.msgtype:34s} {t.count:5d}  {t.qos.reliability}/{t.qos.durability}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="ssov-make-bags", description="Write the shipped sample bags "
                                 "(reproducibly: same code, same bytes).")
    ap.add_argument("--out", type=Path, default=REPO / "rosbags", help="directory for the bags (default: rosbags/)")
    ap.add_argument("--only", choices=sorted(SHIPPED), action="append", help="write only this bag (repeatable)")
    ap.add_argument("--overwrite", action="store_true", help="replace existing bags")
    ap.add_argument("--sweeps", type=int, default=40, help="synthetic bag: number of 10 Hz sweeps")
    args = ap.parse_args(argv)
    try:
        for name in args.only or list(SHIPPED):
            path = args.out / name
            if path.exists() and not args.overwrite:
                print(f"{path} exists (use --overwrite to regenerate)")
                continue
            kwargs = {"sweeps": args.sweeps} if name == "synthetic_street" else {}
            SHIPPED[name](path, overwrite=args.overwrite, **kwargs)
            print(describe(path))
    except SsovError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
