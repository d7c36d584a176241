"""ROS 2 node ``ssov_segmenter``: lidar semantic segmentation over the ROS-free core (thin: conversion,
parameters, sync, publishing).

Topics (relative to the node; remap them in a launch file):
  in   ~/input/points (PointCloud2, SensorDataQoS keep_last(1)), ~/input/odometry (nav_msgs/Odometry),
       /tf and /tf_static (tf2_msgs/TFMessage, only when that package is installed: it has no PyPI wheel),
       ~/input/<cam>/image (Image or CompressedImage) + ~/input/<cam>/camera_info for each cameras.names entry,
       ~/query (std_msgs/String: a text query; "" clears it)
  out  ~/output/points (x, y, z, intensity, label uint32, score float32, rgb packed), ~/output/query_points
       (x, y, z, similarity float32; while a query is active), ~/output/legend
       (MarkerArray, transient local), ~/output/<cam>/overlay (Image rgb8), ~/debug/processing_time_ms/<stage>
       and ~/debug/pipeline_latency_ms (std_msgs/Float64), /diagnostics

With ``pipeline.enabled`` the cloud callback reads the cloud and runs the network; a worker thread of the core
(:class:`ssov_train.inference.PipelinedSegmenter`) runs AFI and publishes, overlapping the next cloud's network.
Callbacks run on a multi-threaded executor in four callback groups (clouds; camera images and infos; odometry
and tf; queries, timers and parameters), so images and poses keep arriving while a cloud is in the network.
SIGINT and SIGTERM stop the node cleanly: the cloud in flight is finished and published, exit code 0.

Run: ``python -m ssov_ros.node --ros-args --params-file config/ssov_node.yaml`` (or ``ros2 run ssov_ros
ssov_segmenter``). Bad input never stops the node: the frame is dropped with a throttled warning and counted in
/diagnostics. A missing or broken model file stops it at start-up with one error line.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Odometry
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data)
from rclpy.signals import SignalHandlerOptions
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Float64, String
from visualization_msgs.msg import Marker, MarkerArray

from ssov_train.afi import resolve_classes
from ssov_train.errors import ConfigError, DataError, SsovError
from ssov_train.inference import FrameOutcome, PipelinedSegmenter, Segmenter, open_backend
from ssov_train.features import missing_intensity_reason
from ssov_train.intensity import IntensityRangeCheck, training_intensity_max
from ssov_train.openvocab.query import TextQuery, prepare_query

from .overlay import camera_from_info, decode_image, image_to_ros, render_overlay
from .params import (DEFAULT_MODEL, NodeConfig, ParamSpec, from_flat, parameter_table, resolve_model_path,
                     ros_values, unknown_parameters)
from .output_cloud import segmented_cloud, similarity_columns
from .pointcloud import CloudError, read_cloud, rgb_packed, to_ros_cloud
from .shutdown import stop_on_signals
from .sync import ApproximateSync
from .tf_buffer import TimeJumpDetector, TransformBuffer, stamp_ns, xyz_quat_matrix

NODE_NAME = "ssov_segmenter"
_ROS_TYPES = {"bool": Parameter.Type.BOOL, "integer": Parameter.Type.INTEGER, "double": Parameter.Type.DOUBLE,
              "string": Parameter.Type.STRING, "string_array": Parameter.Type.STRING_ARRAY,
              "double_array": Parameter.Type.DOUBLE_ARRAY}
READ_ONLY_NOTE = "read-only: fixed at start-up (set it in the params file or with -p, then restart the node)"


def parameter_descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """The ROS descriptor of one parameter of :func:`ssov_ros.params.parameter_table` (``ros2 param describe``)."""
    constraints = []
    if spec.choices:
        constraints.append(f"one of: {', '.join(spec.choices)}")
    if spec.unset:
        constraints.append(spec.unset)
        if spec.min is not None:  # NaN fails a range check: the range is stated, checked by NodeConfig.check
            constraints.append(f"else in [{spec.min:g}, {spec.max:g}]")
    if spec.read_only:
        constraints.append(READ_ONLY_NOTE)
    d = ParameterDescriptor(name=spec.name, type=_ROS_TYPES[spec.type].value, description=spec.description,
                            additional_constraints="; ".join(constraints), read_only=spec.read_only)
    if spec.min is not None and not spec.unset:
        if spec.type == "integer":
            d.integer_range = [IntegerRange(from_value=int(spec.min), to_value=int(spec.max), step=0)]
        else:
            d.floating_point_range = [FloatingPointRange(from_value=float(spec.min), to_value=float(spec.max),
                                                         step=0.0)]
    return d


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


MAX_QUERY_CHARS = 256  # longer query text is refused (a vocabulary prompt is a few words)
INTENSITY_CHECK_FRAMES = 5  # clouds in a row with intensities unlike the model's before it is reported
EXECUTOR_THREADS = 4  # one per callback group: clouds, cameras, poses, the rest
IMAGE_TYPES = {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CompressedImage": CompressedImage}
# counters reported per diagnostics period (and as totals)
_PERIOD_KEYS = ("dropped", "over_budget", "skipped_overlays", "rejected_odometry", "missed_clouds",
                "clouds_without_frame")


def build_legend(class_names, palette: np.ndarray, frame_id: str, stamp, text_height: float,
                 position) -> MarkerArray:
    """One TEXT_VIEW_FACING marker per class (class 0 'ignore' left out) in the class colour, stacked down."""
    out = MarkerArray()
    x, y, z = (float(v) for v in position)
    for line, (cid, name) in enumerate((i, n) for i, n in enumerate(class_names) if i > 0):
        m = Marker()
        m.header.frame_id = frame_id
        m.header.stamp = stamp
        m.ns, m.id = "legend", cid
        m.type, m.action = Marker.TEXT_VIEW_FACING, Marker.ADD
        m.text = name
        m.pose.position.x, m.pose.position.y = x, y
        m.pose.position.z = z - line * text_height * 1.2
        m.pose.orientation.w = 1.0
        m.scale.z = float(text_height)
        r, g, b = (int(c) for c in palette[cid])
        m.color.r, m.color.g, m.color.b, m.color.a = r / 255.0, g / 255.0, b / 255.0, 1.0  # a=0 is invisible
        m.frame_locked = True
        out.markers.append(m)
    return out


@dataclass
class _Frame:
    """One cloud between the callback (read, pose, network) and publishing."""

    msg_header: Any
    cloud: Any  # pointcloud.Cloud
    valid_idx: np.ndarray
    xyz: np.ndarray
    t_ns: int
    query: Optional[TextQuery]
    cameras: list  # (name, camera_info, image msg, lidar_to_camera or error text) matched at arrival
    timings: dict
    t0: float
    posed: bool = False
    late_cameras: list = field(default_factory=list)  # cameras without an image at arrival: matched again later
    front_ms: float = 0.0  # callback time (read + network) when pipelined


class SegmenterNode(Node):
    def __init__(self, **node_kwargs: Any):
        super().__init__(NODE_NAME, **node_kwargs)
        self._param_names = {spec.name for spec in parameter_table()}
        self.cfg = self._read_parameters()
        model_path = resolve_model_path(self.cfg.model.path)
        backend = open_backend(model_path, backend=self.cfg.model.backend, device=self.cfg.model.device,
                               threads=self.cfg.model.threads or None)
        spec = backend.spec
        if not spec.has_classes:
            raise ConfigError(f"{model_path} is a feature (pre-training) model: the node needs a class model")
        if self.cfg.model.expect_classes and list(spec.class_names) != list(self.cfg.model.expect_classes):
            raise ConfigError(f"{model_path} has classes {list(spec.class_names)}, model.expect_classes says "
                              f"{self.cfg.model.expect_classes}")
        self.spec = spec
        self._model_name = model_path.name
        afi_cfg = self.cfg.afi_config()
        if afi_cfg is not None:
            _check_afi_classes(afi_cfg, self.cfg.afi.preset, spec)
        self.segmenter = Segmenter(backend, afi=afi_cfg,
                                   temporal=self.cfg.temporal_config() if self.cfg.afi.enabled else None,
                                   max_voxels=self.cfg.model.max_voxels or None,
                                   afi_input=self.cfg.afi.input)
        # before subscribing: the first real cloud must not pay the one-off costs (measured 1.2 s -> 0.33 s)
        self.warmup_ms: Optional[float] = self.segmenter.warm_up() if self.cfg.model.warmup else None
        self._lock = threading.Lock()  # stats and lazily created publishers: callbacks and the worker share them
        self.pipeline: Optional[PipelinedSegmenter] = None  # started last: no worker left behind by a failed start
        # (query, why the latest text was refused or ""): replaced as one tuple, so readers never see a mix
        self._query_state: tuple[Optional[TextQuery], str] = (None, "")
        self._lut = spec.palette.astype(np.uint8)
        self._rgb_lut = rgb_packed(self._lut)  # packed RViz colour per class, once rather than per point per cloud
        self.tf = TransformBuffer(extrapolation_ns=int(self.cfg.temporal.pose_tolerance_s * 1e9))
        self._time_jump = TimeJumpDetector()
        self._odom_time_jump = TimeJumpDetector()
        self._odom_frames: Optional[tuple[str, str]] = None  # (parent, child) of the last accepted odometry
        self._odom_last_rejected = ""  # why the latest odometry message was rejected ("" = it was taken)
        self._stats = {"frames": 0, "dropped": 0, "over_budget": 0, "last_ms": 0.0, "last_drop": "",
                       "posed": 0, "unposed_reason": "", "internal_errors": 0, "query_frames": 0, "queries": 0,
                       "skipped_overlays": 0, "last_overlay_skip": "", "rejected_odometry": 0,
                       "last_odometry_reject": "", "missed_clouds": 0, "clouds_without_frame": 0,
                       "superseded": 0}
        self._period_stats = dict.fromkeys(_PERIOD_KEYS, 0)
        self._cloud_seq: dict[Any, int] = {}  # publisher gid -> last publication sequence number seen
        self._intensity_check = IntensityRangeCheck(training_intensity_max(spec.vocabulary), INTENSITY_CHECK_FRAMES)
        self._intensity_problem = ""  # the latest intensity problem, reported in /diagnostics while it lasts
        # the input path of the latest cloud (models with normalised intensity: intensity or geometry only)
        self._input_path = "raw intensity" if not spec.scale_invariant else "waiting for clouds"
        self._logged_once: set[str] = set()
        self._legend_frame: Optional[str] = None
        self._camera_notes: dict[str, str] = {}  # camera -> why its image topic cannot be used ("" = fine)

        # Callback groups: a cloud in the network must not keep images, poses or queries waiting (main() spins a
        # multi-threaded executor); each group runs one callback at a time, so no state needs more than a lock.
        self.cloud_group = MutuallyExclusiveCallbackGroup()
        self.camera_group = MutuallyExclusiveCallbackGroup()
        self.pose_group = MutuallyExclusiveCallbackGroup()  # odometry and tf: the buffer the cloud looks poses up in

        out_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        in_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                            reliability=qos_profile_sensor_data.reliability,
                            durability=qos_profile_sensor_data.durability)
        self.pub_points = self.create_publisher(PointCloud2, "~/output/points", out_qos)
        self.pub_query = self.create_publisher(PointCloud2, "~/output/query_points", out_qos)
        self.pub_legend = self.create_publisher(MarkerArray, "~/output/legend", latched)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.pub_latency = self.create_publisher(Float64, "~/debug/pipeline_latency_ms", 10)
        self._pub_timing: dict[str, Any] = {}
        self.sub_points = self.create_subscription(PointCloud2, "~/input/points", self._on_cloud_message, in_qos,
                                                   callback_group=self.cloud_group)
        self.create_subscription(String, "~/query", self.on_query, QoSProfile(depth=1))

        # by pose_source alone (read-only): afi.enabled and temporal.history may be switched on while running
        pose_source = self.cfg.temporal.pose_source
        self._tf_available = False
        if pose_source in ("auto", "odometry"):
            # best effort matches any publisher; deep enough to keep 0.5 s of 100 Hz odometry while a cloud is processed
            odom_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.BEST_EFFORT)
            self.create_subscription(Odometry, "~/input/odometry", self.on_odometry, odom_qos,
                                     callback_group=self.pose_group)
        if pose_source in ("auto", "tf"):
            self._tf_available = self._subscribe_tf()
            if pose_source == "tf" and not self._tf_available:
                raise ConfigError("temporal.pose_source is 'tf' but tf2_msgs is not installed "
                                  "(it has no PyPI wheel): use pose_source 'odometry'")

        cams = self.cfg.cameras
        self.sync = ApproximateSync(int(cams.sync_tolerance_s * 1e9), depth=cams.queue_depth)
        self._camera_info: dict[str, Any] = {}
        self._pub_overlay: dict[str, Any] = {}
        self._lidar_to_camera = {name: xyz_quat_matrix(cams.lidar_to_camera[7 * i: 7 * i + 7])
                                 for i, name in enumerate(cams.names) if cams.lidar_to_camera}
        self._image_subs: dict[str, Any] = {}  # camera -> image subscription (its type follows the topic's)
        for name in cams.names:
            self._subscribe_image(name, CompressedImage if cams.transport == "compressed" else Image)
            self.create_subscription(CameraInfo, f"~/input/{name}/camera_info",
                                     lambda msg, n=name: self._camera_info.__setitem__(n, msg),
                                     qos_profile_sensor_data, callback_group=self.camera_group)
            self._pub_overlay[name] = self.create_publisher(Image, f"~/output/{name}/overlay", out_qos)
        if cams.names:
            self._check_image_types()  # a publisher already there decides the type before the first image
            self.create_timer(1.0, self._check_image_types)

        if self.cfg.output.legend_frame:
            self._publish_legend(self.cfg.output.legend_frame)
        self.create_timer(self.cfg.output.diagnostics_period_s, self._publish_diagnostics)
        sources = [n for n, on in (("~/input/odometry", pose_source in ("auto", "odometry")),
                                   ("/tf", self._tf_available)) if on]
        afi = "off" if not self.cfg.afi.enabled else (f"on (fed {self.cfg.afi.input}, history "
                                                      f"{self.cfg.temporal.history}, poses from "
                                                      f"{' + '.join(sources) or 'nowhere: per frame'})")
        model_input = (f"raw intensity x {self.cfg.input.intensity_scale:g}" if not spec.scale_invariant else
                       "normalised intensity, geometry only for clouds without (input.intensity_scale unused)")
        inputs = ", ".join(sub.topic_name for sub in self.subscriptions)
        self.get_logger().info(f"model {model_path.name} via {backend.describe()}: {spec.num_classes - 1} classes, "
                               f"voxel {spec.voxel.mode} {spec.voxel.size}; input {model_input}; AFI {afi}; cameras {cams.names or 'none'}; "
                               f"warm-up {'off' if self.warmup_ms is None else f'{self.warmup_ms:.0f} ms'}; "
                               f"pipeline {'on' if self.cfg.pipeline.enabled else 'off'}; subscribed: {inputs}")
        if self.cfg.model.path == DEFAULT_MODEL and model_path.suffix == ".pt":
            self.get_logger().warning(f"the exported demo package {DEFAULT_MODEL} is not installed: running its "
                                      f"checkpoint with torch (slower). `make export` before `colcon build` installs "
                                      f"the package (onnxruntime)")
        if self.cfg.pipeline.enabled:
            self.pipeline = PipelinedSegmenter(self.segmenter, self._on_refined)

    @property
    def _query(self) -> Optional[TextQuery]:
        return self._query_state[0]

    @property
    def _query_error(self) -> str:
        return self._query_state[1]

    # --- parameters ---

    def _read_parameters(self) -> NodeConfig:
        """Declare every parameter (value + descriptor, so `ros2 param dump` lists them all), refuse overrides
        that name no parameter, and return the typed configuration."""
        values: dict[str, Any] = {}
        for spec in parameter_table():
            descriptor = parameter_descriptor(spec)
            try:
                if spec.default == []:
                    # rclpy infers a type from the value and [] has none (nor has `[]` in a params file): declare
                    # the type, give the typed empty array where no override set a value, then the full descriptor
                    ros_type = _ROS_TYPES[spec.type]
                    self.declare_parameter(spec.name, ros_type, ParameterDescriptor(type=descriptor.type))
                    if self.get_parameter_or(spec.name).type_ == Parameter.Type.NOT_SET:
                        result = self.set_parameters([Parameter(spec.name, ros_type, [])])[0]
                        if not result.successful:
                            raise ConfigError(f"parameter {spec.name}: {result.reason}")
                    self.set_descriptor(spec.name, descriptor)
                else:
                    self.declare_parameter(spec.name, spec.default, descriptor)
            except (rclpy.exceptions.InvalidParameterTypeException, rclpy.exceptions.InvalidParameterValueException,
                    rclpy.exceptions.ParameterException, TypeError, ValueError) as exc:
                raise ConfigError(f"parameter {spec.name}: {_one_line(exc)}") from exc
            values[spec.name] = self.get_parameter(spec.name).value
        # rclpy keeps overrides for undeclared names and ignores them (allow_undeclared_parameters is off): a
        # misspelt -p or params-file key would be silently lost. rclpy has no public accessor for the overrides.
        unknown = unknown_parameters(n for n in self._parameter_overrides if not self.has_parameter(n))
        if unknown:
            raise ConfigError(f"unknown parameter(s) {', '.join(unknown)}: not parameters of {NODE_NAME} "
                              f"(`{NODE_NAME} --help` lists them)")
        cfg = from_flat(values, f"{NODE_NAME} parameters")
        self._pending_change: Optional[tuple[NodeConfig, Any]] = None
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        return cfg

    def _validate_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """`ros2 param set` of runtime parameters (rclpy refuses read-only ones and out-of-range values before
        this): the whole new configuration is checked, and a new AFI stage built, before anything changes."""
        self._pending_change = None  # a change another callback refused must not be applied with the next one
        ours = {p.name: p.value for p in params if p.name in self._param_names}
        if not ours:
            return SetParametersResult(successful=True)
        try:
            cfg = from_flat({**ros_values(self.cfg), **ours}, "parameter change")
            afi = self._pending_afi(cfg)
        except (ConfigError, ValueError, KeyError) as exc:
            return SetParametersResult(successful=False, reason=_one_line(exc))
        self._pending_change = (cfg, afi)
        return SetParametersResult(successful=True)

    def _pending_afi(self, cfg: NodeConfig) -> Any:
        """A new AFI stage when AFI or temporal parameters change (its history starts anew), else ``False``."""
        old = self.cfg
        if (cfg.afi_config(), cfg.temporal_config()) == (old.afi_config(), old.temporal_config()):
            return False
        return self.segmenter.build_afi(cfg.afi_config(), cfg.temporal_config() if cfg.afi.enabled else None)

    def _apply_parameters(self, params: list[Parameter]) -> None:
        """After a successful set: the next cloud uses the new values."""
        if self._pending_change is None:
            return
        (cfg, afi), self._pending_change = self._pending_change, None
        if afi is not False:
            self.segmenter.afi = afi
        self.segmenter.afi_input = cfg.afi.input
        self.tf.extrapolation_ns = int(cfg.temporal.pose_tolerance_s * 1e9)
        self.sync.tolerance_ns = int(cfg.cameras.sync_tolerance_s * 1e9)
        self.cfg = cfg
        self.get_logger().info("parameters changed: " + ", ".join(f"{p.name}={p.value!r}" for p in params)
                               + ("; AFI history restarted" if afi is not False else ""))

    # --- inputs ---

    def _subscribe_tf(self) -> bool:
        try:
            from tf2_msgs.msg import TFMessage
        except ImportError:
            return False
        static_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(TFMessage, "/tf", lambda m: self.tf.add_tf_message(m), 100,
                                 callback_group=self.pose_group)
        self.create_subscription(TFMessage, "/tf_static", lambda m: self.tf.add_tf_message(m, static=True),
                                 static_qos, callback_group=self.pose_group)
        return True

    def _subscribe_image(self, name: str, msg_type) -> None:
        self._image_subs[name] = self.create_subscription(
            msg_type, f"~/input/{name}/image", lambda msg, n=name: self.sync.push(n, stamp_ns(msg.header.stamp), msg),
            qos_profile_sensor_data, callback_group=self.camera_group)

    def _check_image_types(self) -> None:
        """Subscribe each camera's image topic with the type its publishers use (Image or CompressedImage,
        whatever cameras.transport says: a remapped topic decides); a topic of another type is reported once."""
        for name, sub in list(self._image_subs.items()):
            topic = sub.topic_name
            types = {info.topic_type for info in self.get_publishers_info_by_topic(topic)}
            if not types:
                continue  # no publisher yet: keep the transport's type
            wanted = [IMAGE_TYPES[t] for t in types if t in IMAGE_TYPES]
            if len(types) == 1 and wanted:
                note = ""
                if wanted[0] is not sub.msg_type:
                    self.destroy_subscription(sub)
                    self._subscribe_image(name, wanted[0])
                    self.get_logger().info(f"camera {name}: {topic} carries {next(iter(types))}: subscribed with "
                                           f"that type (cameras.transport is {self.cfg.cameras.transport!r})")
            else:
                note = (f"{topic} carries {', '.join(sorted(types))}, not one of sensor_msgs/msg/Image or "
                        f"CompressedImage: no overlay")
            if note and self._camera_notes.get(name) != note:
                self.get_logger().warning(f"camera {name}: {note}")
            self._camera_notes[name] = note

    def on_odometry(self, msg: Odometry) -> None:
        if self._odom_time_jump.jumped_back(stamp_ns(msg.header.stamp)):
            self.tf.clear()  # a bag restarted: the previous pass's poses would be mixed with this one's
        try:
            frames = self.tf.add_odometry(msg)
        except (ValueError, AttributeError) as exc:
            reason = f"odometry message rejected: {exc}"
            with self._lock:
                self._stats["rejected_odometry"] += 1
                self._period_stats["rejected_odometry"] += 1
                self._stats["last_odometry_reject"] = reason
            self._odom_last_rejected = reason
            self.get_logger().warning(reason, throttle_duration_sec=self.cfg.output.warn_throttle_s)
            return
        self._odom_frames, self._odom_last_rejected = frames, ""

    def _on_cloud_message(self, msg: PointCloud2, info: dict) -> None:
        """Subscription callback: counts the clouds that never reached it, then :meth:`on_cloud`."""
        self._count_missed_clouds(info)
        self.on_cloud(msg)

    def _count_missed_clouds(self, info: dict) -> None:
        # The input keeps the latest cloud only: one published while the node was busy is overwritten before the
        # callback takes it. The publisher's sequence numbers tell how many never arrived (where the middleware
        # reports them: FastDDS does).
        seq, gid = info.get("publication_sequence_number"), info.get("publisher_gid")
        if seq is None or gid is None:
            return
        key = repr(gid)
        last = self._cloud_seq.get(key)
        self._cloud_seq[key] = seq
        if last is not None and seq > last + 1:
            with self._lock:
                self._stats["missed_clouds"] += seq - last - 1
                self._period_stats["missed_clouds"] += seq - last - 1

    def on_cloud(self, msg: PointCloud2) -> None:
        """Process one cloud; never raises (a bad frame is dropped and reported)."""
        try:
            self.process(msg)
        except Exception as exc:  # noqa: BLE001 - the node must survive anything one message can trigger
            self._frame_failed(exc)

    def _on_refined(self, outcome: FrameOutcome) -> None:
        """Pipeline worker: publish a refined cloud; never raises (a failed frame is dropped and reported)."""
        if outcome.superseded:
            with self._lock:
                self._stats["superseded"] += 1
            self._drop("superseded: a newer cloud was ready before AFI finished the previous one")
            return
        try:
            if outcome.error is not None:
                raise outcome.error
            outcome.context.timings["wait"] = outcome.wait_ms
            self._publish_result(outcome.context, outcome.result)
        except Exception as exc:  # noqa: BLE001 - as on_cloud
            self._frame_failed(exc)

    def _frame_failed(self, exc: Exception) -> None:
        if not self.context.ok():
            return  # shut down from outside while a frame was in flight: nothing can be published any more
        if isinstance(exc, (CloudError, DataError)):
            self._drop(str(exc))
            return
        with self._lock:
            self._stats["internal_errors"] += 1
        self._drop(f"internal error: {type(exc).__name__}: {exc}")
        self.get_logger().error("".join(traceback.format_exception(exc)),
                                throttle_duration_sec=self.cfg.output.warn_throttle_s)

    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        """Wait until every cloud received so far is published or dropped (pipelined); False on timeout."""
        return self.pipeline.wait_idle(timeout) if self.pipeline is not None else True

    def on_query(self, msg: String) -> None:
        """A new text query for the following clouds; "" clears it.  Text the model cannot score, or longer than
        MAX_QUERY_CHARS, is refused (throttled warning, /diagnostics) and clears the previous query: its answers
        would be to another text."""
        with self._lock:
            self._stats["queries"] += 1
        if len(msg.data) > MAX_QUERY_CHARS:  # never logged or echoed: it may be megabytes
            error = f"{len(msg.data)} characters (at most {MAX_QUERY_CHARS})"
            self._query_state = (None, error)
            self.get_logger().warning(f"query refused: {error}", throttle_duration_sec=self.cfg.output.warn_throttle_s)
            return
        text = msg.data.strip()
        if not text:
            self._query_state = (None, "")
            self.get_logger().info("query cleared")
            return
        try:
            query = prepare_query(self.spec, text)
        except ConfigError as exc:
            self._query_state = (None, f"{text!r}: {exc}")
            self.get_logger().warning(f"query refused: {exc}", throttle_duration_sec=self.cfg.output.warn_throttle_s)
            return
        self._query_state = (query, "")
        self.get_logger().info(f"query {text!r}: {query.description} on ~/output/query_points")

    def _drop(self, reason: str) -> None:
        with self._lock:
            self._stats["dropped"] += 1
            self._period_stats["dropped"] += 1
            self._stats["last_drop"] = reason
        self.get_logger().warning(f"frame dropped: {reason}", throttle_duration_sec=self.cfg.output.warn_throttle_s)

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._logged_once:
            self._logged_once.add(key)
            self.get_logger().warning(text)

    # --- processing ---

    def process(self, msg: PointCloud2) -> None:
        t0 = time.perf_counter()
        cloud = read_cloud(msg)
        valid = cloud.valid
        if self.cfg.input.zero_points_invalid:  # (0, 0, 0) is how many drivers mark "no return"
            valid = valid & (cloud.xyz != 0).any(axis=1)  # a comparison: no numpy warning for NaN or signalling NaN
        with np.errstate(over="ignore", invalid="ignore"):
            in_range = np.einsum("ij,ij->i", cloud.xyz, cloud.xyz) <= self.cfg.input.max_range ** 2
        valid_idx = np.flatnonzero(valid & in_range)
        if len(valid_idx) == 0:
            zero = " (points at exactly 0, 0, 0 are invalid)" if self.cfg.input.zero_points_invalid else ""
            raise CloudError(f"no finite point within {self.cfg.input.max_range:g} m among {cloud.num_points}{zero}")
        t_ns = stamp_ns(msg.header.stamp)
        frame = msg.header.frame_id
        if not frame:
            with self._lock:
                self._stats["clouds_without_frame"] += 1
                self._period_stats["clouds_without_frame"] += 1
            self.get_logger().warning("cloud with an empty header.frame_id: labelled, but RViz and tf cannot place "
                                      "it (set the driver's frame id)",
                                      throttle_duration_sec=self.cfg.output.warn_throttle_s)
        if self._time_jump.jumped_back(t_ns):  # a bag restarted: nothing before now can be aligned
            (self.pipeline or self.segmenter).reset()  # the pipeline resets in order, before this cloud's AFI
            # images of the restarted bag may have arrived just before this cloud: only those in its future (the
            # previous pass's) go. Poses: an odometry that restarted too has cleared them already (on_odometry)
            odom_ns = self._odom_time_jump.last_ns
            if odom_ns is None or odom_ns > t_ns + self.tf.extrapolation_ns:
                self.tf.clear()
            self.sync.clear(after_ns=t_ns + self.sync.tolerance_ns)
        timings = {"read": (time.perf_counter() - t0) * 1000}

        pose = self._pose(frame, t_ns)
        xyz = cloud.xyz[valid_idx]
        intensity = self._model_intensity(cloud, valid_idx)
        query = self._query
        keep_probs = query is not None and query.needs_probs
        # cameras are matched at the cloud's arrival (their queues hold the latest few images only); one whose image
        # of this instant is still on its way is matched again before publishing
        cameras, late = self._match_cameras(t_ns, frame, self.cfg.cameras.names, report=False)
        ctx = _Frame(msg.header, cloud, valid_idx, xyz, t_ns, query, cameras, timings, t0, posed=pose is not None,
                     late_cameras=late)
        if self.pipeline is not None:
            self.pipeline.submit(xyz, intensity, pose=pose, keep_probs=keep_probs, context=ctx)
            ctx.front_ms = (time.perf_counter() - t0) * 1000
        else:
            self._publish_result(ctx, self.segmenter.segment(xyz, intensity, pose=pose, keep_probs=keep_probs))

    def _model_intensity(self, cloud, valid_idx: np.ndarray) -> Optional[np.ndarray]:
        """The valid points' intensity as the model takes it (None: the cloud has none, the model runs on geometry
        alone); what is wrong with it is logged once and shown in /diagnostics (the frame is still segmented: a
        wrong intensity changes labels but is no reason to stop)."""
        if self.spec.scale_invariant:
            return self._normalized_model_intensity(cloud, valid_idx)
        if cloud.intensity_issue:
            self._intensity_problem = f"{cloud.intensity_issue}: the model gets intensity 0"
            self._warn_once(f"intensity:{cloud.intensity_issue}", f"intensity: {self._intensity_problem}")
            return np.zeros(len(valid_idx), np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            intensity = cloud.intensity[valid_idx] * np.float32(self.cfg.input.intensity_scale)
        finite = np.isfinite(intensity)
        problem = self._intensity_check.update(intensity[finite])
        if problem:  # returned once per run of such clouds
            self.get_logger().warning(f"intensity: {problem} (input.intensity_scale)")
        intensity = self._finite_intensity(intensity, finite)
        self._intensity_problem = (f"{self._intensity_check.problem} (input.intensity_scale)"
                                   if self._intensity_check.problem else "")
        return intensity

    def _normalized_model_intensity(self, cloud, valid_idx: np.ndarray) -> Optional[np.ndarray]:
        """A model with per-cloud normalised intensity: no scale to check; the cloud's intensity when it has a
        usable one, else None (the geometry-only input).  The path is logged once per change, in /diagnostics."""
        intensity, why = None, cloud.intensity_issue
        if not why:
            intensity = cloud.intensity[valid_idx]
            intensity = self._finite_intensity(intensity, np.isfinite(intensity))
            why = missing_intensity_reason(intensity, self.spec.input_normalization.percentile)
        path = f"geometry only ({why})" if why else "normalised intensity"
        if path.split(" (")[0] != self._input_path.split(" (")[0]:
            self.get_logger().info(f"input: {path}" + ("" if why else " (intensity over the cloud's "
                                   f"{self.spec.input_normalization.percentile:g}th percentile)"))
        self._input_path = path
        return None if why else intensity

    def _finite_intensity(self, intensity: np.ndarray, finite: np.ndarray) -> np.ndarray:
        if finite.all():
            return intensity
        # a corrupt intensity must not cost the whole frame: non-finite values read as 0
        self._warn_once("intensity:non-finite", f"intensity: {np.count_nonzero(~finite)} non-finite value(s) "
                                                f"in a cloud read as 0")
        return np.where(finite, intensity, np.float32(0.0))

    def _publish_result(self, ctx: _Frame, result) -> None:
        """Labels, scores, query similarity and overlays of one segmented cloud out; timings and stats."""
        timings, cloud, valid_idx, query = ctx.timings, ctx.cloud, ctx.valid_idx, ctx.query
        timings.update(result.timings_ms)
        t = time.perf_counter()
        out = segmented_cloud(cloud, valid_idx, result.labels, result.scores, self._rgb_lut,
                              self.cfg.input.drop_invalid_points)
        self.pub_points.publish(to_ros_cloud(ctx.msg_header, out.columns, height=out.height, is_dense=out.is_dense))
        if query is not None:
            self.pub_query.publish(to_ros_cloud(ctx.msg_header, similarity_columns(out, valid_idx, query.score(result)),
                                                height=out.height, is_dense=out.is_dense))
            with self._lock:
                self._stats["query_frames"] += 1
        frame = ctx.msg_header.frame_id
        if not self.cfg.output.legend_frame and frame and frame != self._legend_frame:
            self._publish_legend(frame)  # follows the clouds' frame; never latched to an empty one
        timings["publish"] = (time.perf_counter() - t) * 1000

        cameras = ctx.cameras
        if ctx.late_cameras:
            cameras = cameras + self._match_cameras(ctx.t_ns, frame, ctx.late_cameras, report=True)[0]
        if cameras:
            t = time.perf_counter()
            self._publish_overlays(cameras, ctx.xyz, result.labels)  # the valid points' labels
            timings["overlay"] = (time.perf_counter() - t) * 1000

        total = (time.perf_counter() - ctx.t0) * 1000  # cloud arrival to published, hand-off wait included
        timings["total"] = total
        # what limits the rate: the slower of the two threads when pipelined, the whole frame when not
        busiest = total if self.pipeline is None else max(
            ctx.front_ms, sum(timings.get(k, 0.0) for k in ("afi", "publish", "overlay")))
        with self._lock:
            self._stats["frames"] += 1
            self._stats["posed"] += ctx.posed
            self._stats["last_ms"] = busiest
            if busiest > self.cfg.output.max_processing_ms:
                self._stats["over_budget"] += 1
                self._period_stats["over_budget"] += 1
        for stage, ms in timings.items():
            self._timing_publisher(stage).publish(Float64(data=float(ms)))
        now_ns = self.get_clock().now().nanoseconds
        self.pub_latency.publish(Float64(data=(now_ns - ctx.t_ns) / 1e6))

    def _timing_publisher(self, stage: str):
        with self._lock:
            if stage not in self._pub_timing:
                self._pub_timing[stage] = self.create_publisher(Float64, f"~/debug/processing_time_ms/{stage}", 10)
            return self._pub_timing[stage]

    def _pose(self, frame: str, t_ns: int) -> Optional[np.ndarray]:
        """fixed <- cloud-frame at t_ns for streaming AFI, or None (then the frame is refined on its own)."""
        tcfg = self.cfg.temporal
        if not self.cfg.afi.enabled or tcfg.history == 0 or tcfg.pose_source == "none":
            return None
        odom, rejected = self._odom_frames, self._odom_last_rejected
        fixed = tcfg.fixed_frame or (odom[0] if odom else "")
        pose, reason = None, ""
        if not frame:
            reason = "the cloud has no header.frame_id"
        elif not fixed:
            reason = rejected or "no odometry received and no temporal.fixed_frame set"
        else:
            if tcfg.sensor_to_base:
                base = tcfg.base_frame or (odom[1] if odom else "")
                if base and base != frame and frame not in self.tf.frames():
                    self.tf.set_static(base, frame, xyz_quat_matrix(tcfg.sensor_to_base))
            # the odometry of the cloud's instant may still be on its way (another callback thread): wait for it
            # up to the pose tolerance, once poses flow at all
            pose = self.tf.wait_lookup(fixed, frame, t_ns, tcfg.pose_tolerance_s if odom or self._tf_available else 0)
            if pose is None:
                reason = (f"no transform {fixed} <- {frame} at the cloud time ("
                          + (f"the latest odometry was rejected: {rejected})" if rejected else
                             "set temporal.sensor_to_base or publish /tf_static)"))
        with self._lock:
            self._stats["unposed_reason"] = reason
        return pose

    def _match_cameras(self, t_ns: int, frame: str, names, report: bool) -> tuple[list, list]:
        """(name, camera_info, image, lidar_to_camera or why not) of each camera in ``names`` with an image near
        t_ns, and the names of those without one (counted as skipped overlays, with the reason, if ``report``)."""
        matches, missing = [], []
        for name in names:
            info = self._camera_info.get(name)
            hit = self.sync.match(t_ns, [name])
            if info is None or hit is None:
                missing.append(name)
                if report:
                    self._skip_overlay(name, self._camera_notes.get(name) or (
                        "no camera_info received" if info is None else
                        f"no image within {self.cfg.cameras.sync_tolerance_s:g} s of the cloud"))
                continue
            img_msg = hit[name]
            l2c = self._lidar_to_camera.get(name)
            if l2c is None:
                l2c = self.tf.lookup(info.header.frame_id or img_msg.header.frame_id, frame, t_ns) if frame else None
                if l2c is None:
                    l2c = (f"no transform {info.header.frame_id} <- {frame or '(cloud without frame_id)'} "
                           f"(set cameras.lidar_to_camera or publish /tf_static)")
            matches.append((name, info, img_msg, l2c))
        return matches, missing

    def _skip_overlay(self, name: str, reason: str) -> None:
        with self._lock:
            self._stats["skipped_overlays"] += 1
            self._period_stats["skipped_overlays"] += 1
            self._stats["last_overlay_skip"] = f"{name}: {reason}"
        self.get_logger().warning(f"overlay {name} skipped: {reason}",
                                  throttle_duration_sec=self.cfg.output.warn_throttle_s)

    def _publish_overlays(self, cameras: list, xyz: np.ndarray, labels: np.ndarray) -> None:
        colors = self._lut[labels]
        for name, info, img_msg, l2c in cameras:
            try:
                if isinstance(l2c, str):
                    raise DataError(l2c)
                camera = camera_from_info(info, l2c)
                image, _ = render_overlay(decode_image(img_msg), camera, xyz, colors,
                                          radius=self.cfg.cameras.point_radius, occlusion=self.cfg.cameras.occlusion)
                self._pub_overlay[name].publish(image_to_ros(img_msg.header, image))
            except DataError as exc:
                self._skip_overlay(name, str(exc))

    # --- legend / diagnostics ---

    def _publish_legend(self, frame: str) -> None:
        self._legend_frame = frame
        self.pub_legend.publish(build_legend(self.spec.class_names, self._lut, frame, self.get_clock().now().to_msg(),
                                             self.cfg.output.legend_text_height, self.cfg.output.legend_position))

    def diagnostic_status(self) -> DiagnosticStatus:
        with self._lock:
            s, p = dict(self._stats), dict(self._period_stats)
        query, query_error = self._query_state  # one snapshot: a query and its error always belong together
        status = DiagnosticStatus(name=f"{self.get_name()}: segmentation", hardware_id=self._model_name)
        problems = []
        if p["dropped"]:
            problems.append(f"{p['dropped']} frame(s) dropped: {s['last_drop']}")
        if p["missed_clouds"]:
            problems.append(f"{p['missed_clouds']} cloud(s) never processed: overwritten in the keep-last-1 input "
                            f"queue while the node was busy (or lost in transport)")
        if p["over_budget"]:
            problems.append(f"{p['over_budget']} frame(s) over {self.cfg.output.max_processing_ms:g} ms")
        if p["clouds_without_frame"]:
            problems.append(f"{p['clouds_without_frame']} cloud(s) with an empty header.frame_id")
        if p["skipped_overlays"]:
            problems.append(f"{p['skipped_overlays']} overlay(s) skipped: {s['last_overlay_skip']}")
        if p["rejected_odometry"]:
            problems.append(f"{p['rejected_odometry']} {s['last_odometry_reject']}")
        if self._intensity_problem:
            problems.append(f"intensity: {self._intensity_problem}")
        if query_error:
            problems.append(f"query refused: {query_error}")
        status.level = DiagnosticStatus.WARN if problems else DiagnosticStatus.OK
        status.message = "; ".join(problems) if problems else ("ok" if s["frames"] else "waiting for clouds")
        values = {"frames": s["frames"], "dropped_total": s["dropped"], "over_budget_total": s["over_budget"],
                  "last_processing_ms": f"{s['last_ms']:.1f}", "budget_ms": self.cfg.output.max_processing_ms,
                  "pipeline": self.pipeline is not None, "superseded_total": s["superseded"],
                  "last_drop_reason": s["last_drop"], "internal_errors_total": s["internal_errors"],
                  "missed_clouds_total": s["missed_clouds"], "clouds_without_frame_total": s["clouds_without_frame"],
                  "frames_with_pose": s["posed"], "no_pose_reason": s["unposed_reason"],
                  "rejected_odometry_total": s["rejected_odometry"], "last_odometry_reject": s["last_odometry_reject"],
                  "skipped_overlays_total": s["skipped_overlays"], "last_overlay_skip": s["last_overlay_skip"],
                  "intensity_problem": self._intensity_problem, "input": self._input_path,
                  "afi_input": self.segmenter.afi_input, "backend": self.segmenter.backend.describe(),
                  "queries_total": s["queries"], "query": query.text if query is not None else "",
                  "query_scores": query.description if query is not None else "",
                  "query_frames_total": s["query_frames"], "query_error": query_error}
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        return status

    def _publish_diagnostics(self) -> None:
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [self.diagnostic_status()]
        self.pub_diag.publish(arr)
        with self._lock:
            self._period_stats = dict.fromkeys(_PERIOD_KEYS, 0)

    def destroy_node(self) -> None:
        if getattr(self, "pipeline", None) is not None:
            self.pipeline.close(timeout=10.0)  # publishes the cloud in flight, joins the worker
        if hasattr(self, "segmenter"):  # absent when start-up failed
            self.segmenter.backend.close()
        super().destroy_node()


def build_parser() -> argparse.ArgumentParser:
    """The command line besides ROS arguments (``--ros-args ...``): only ``--help``, which lists the parameters."""
    lines = []
    for spec in parameter_table():
        default = "[]" if spec.default == [] else repr(spec.default)
        allowed = ("|".join(spec.choices) if spec.choices
                   else f"{spec.min:g}..{spec.max:g}" if spec.min is not None else "")
        flags = ", ".join(f for f in (spec.type, allowed, "read-only" if spec.read_only else "runtime") if f)
        unset = f"; {spec.unset}" if spec.unset else ""
        lines.append(f"  {spec.name} = {default} ({flags}): {spec.description}{unset}")
    epilog = ("parameters (-p NAME:=VALUE, or a params file with --params-file FILE; 'runtime' ones also with "
              "`ros2 param set`):\n" + "\n".join(lines) + "\n\ninputs: ~/input/points (PointCloud2), ~/input/odometry "
              "(nav_msgs/Odometry), /tf and /tf_static, ~/input/<camera>/image + camera_info, ~/query (String)\n"
              "outputs: ~/output/points, ~/output/query_points, ~/output/legend, ~/output/<camera>/overlay, "
              "/diagnostics")
    return argparse.ArgumentParser(
        prog=NODE_NAME, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog,
        usage=f"{NODE_NAME} [-h] [--ros-args [-p NAME:=VALUE ...] [--params-file FILE] [-r FROM:=TO ...]]",
        description="Lidar semantic segmentation node (ssov): labels each PointCloud2 on ~/input/points.")


def _check_afi_classes(afi_cfg, preset: str, spec) -> None:
    """The AFI preset's class names must be classes of the model (resolved in its vocabulary), else one line."""
    vocabulary = spec.vocabulary or afi_cfg.dictionary
    try:
        resolve_classes(afi_cfg.flat_classes, vocabulary, spec.num_classes)
        if afi_cfg.merge_pseudo:
            resolve_classes(afi_cfg.pseudo_classes, vocabulary, spec.num_classes)
    except (KeyError, ValueError) as exc:
        reason = exc.args[0] if exc.args else exc
        raise ConfigError(f"afi.preset {preset!r}: its classes {list(afi_cfg.flat_classes)} are not classes of the "
                          f"model (vocabulary {vocabulary!r}: {reason}); use a preset of the model's dataset") from None


def main(args: Optional[list[str]] = None) -> int:
    argv = list(sys.argv if args is None else args)
    # non-ROS arguments: --help prints the usage and exits 0; anything else is refused (exit 2) before ROS starts
    build_parser().parse_args(rclpy.utilities.remove_ros_args(argv)[1:])
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        node = SegmenterNode()
    except SsovError as exc:
        print(f"{NODE_NAME}: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    executor = MultiThreadedExecutor(num_threads=EXECUTOR_THREADS)
    executor.add_node(node)
    try:
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)  # short: the signal handler runs between calls
    finally:
        executor.shutdown()  # waits for the callbacks running now (a cloud in the network)
        node.destroy_node()  # then the pipeline publishes that cloud while the context is still valid
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
