"""The node's parameters as a typed dataclass tree, ROS-free: defaults, descriptions, ranges, validation, names.

ROS parameter names are the dotted paths of the fields (``afi.enabled``, ``temporal.history``). Each field is
declared with :func:`_param`: its default plus what ``ros2 param describe`` shows (description, inclusive range,
read-only or changeable at runtime). :func:`parameter_table` returns them all as :class:`ParamSpec` rows, the data
the node declares from (and a parameter reference can be generated from); ``config/ssov_node.yaml`` lists every
one with its default. An optional number's "unset" is NaN on the ROS side (``.nan`` in YAML) and None here.
Model-bound values (classes, palette, voxel grid, input fields) are NOT parameters: they come from the model
file (:class:`ssov_train.inference.ModelSpec`); ``model.expect_classes`` only checks them.
"""

from __future__ import annotations

import array
import dataclasses
import difflib
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from ssov_export.package import ONNX_FILE, SIDECAR_FILE
from ssov_train.afi import AFIConfig, TemporalConfig
from ssov_train.config import from_dict, nest_dotted
from ssov_train.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "ssov_ros"
# the demo model exported by `make export`: what the node runs by default (onnxruntime on CPU)
DEFAULT_MODEL = "models/ssov_synthetic_minkunet34c_w025.ssovpkg"
PACKAGE_SUFFIX = ".ssovpkg"  # ssov_export/package.py's naming convention for package directories


def _param(default: Any, description: str, *, runtime: bool = False, min: Optional[float] = None,
           max: Optional[float] = None, unset: str = "") -> Any:
    """A parameter field: its default and, as field metadata, what ROS users see of it (``ros2 param describe``):
    the description, the inclusive range, whether it may change while the node runs (else read-only), and what
    the "unset" sentinel means (NaN for an optional number)."""
    meta = {"description": description, "runtime": runtime, "min": min, "max": max, "unset": unset}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


_SEVEN = "[x, y, z, qx, qy, qz, qw]"


@dataclass
class ModelParams:
    path: str = _param(DEFAULT_MODEL, "exported model package (.ssovpkg) or ssov-checkpoint (.pt); a relative path "
                       "is looked up in the package share directory (share/ssov_ros), then the working directory, "
                       "then the source tree; the default falls back to the installed checkpoint (torch) when "
                       "the exported package was not built")
    backend: Literal["auto", "torch", "onnxruntime", "tensorrt", "cpu-gemm"] = _param(
        "auto", "inference backend; auto = by file type (.pt: torch, package: onnxruntime); cpu-gemm = fused "
        "gather-GEMM-scatter sparse convs on CPU (a .pt, or a package exported with its weights_cpu.npz)")
    device: str = _param("cpu", "torch backend device: cpu | cuda | cuda:N")
    # OpenMP threads collapse when the cores are shared with other nodes (measured 9x slower, README)
    threads: int = _param(1, "torch / onnxruntime intra-op threads; 0 = the library default (every core)",
                          min=0, max=1024)
    max_voxels: int = _param(0, "voxel budget of dense sensors: a scan with more voxels keeps the max_voxels "
                             "nearest to the sensor, farther points get label 0 and score 0 (not segmented); "
                             "0 = no budget (docs/performance.md, Scale)", min=0, max=10_000_000)
    expect_classes: list[str] = _param([], "if not empty, the model's class names must be exactly these "
                                       "(checked at start-up)")
    warmup: bool = _param(True, "one inference on a synthetic scan at start-up, so the first cloud is not slow")


@dataclass
class PipelineParams:
    # AFI of cloud t (plus publishing) on a worker thread while the callback runs the network of cloud t+1: on
    # two cores throughput is the slower half, not the sum (README "ROS 2 node")
    enabled: bool = _param(True, "AFI and publishing on a worker thread, overlapping the next cloud's network "
                           "(same outputs; a cloud still waiting when a newer one is inferred is dropped)")


@dataclass
class InputParams:
    intensity_scale: float = _param(1.0, "the cloud's intensity times this = the model's training range "
                                    "(nuScenes 0..255); no effect on models with normalised intensity (the "
                                    "default model)", runtime=True, min=0.0, max=1e6)
    drop_invalid_points: bool = _param(False, "invalid points (NaN/Inf, beyond max_range): false = published "
                                       "with label 0, true = removed from the output", runtime=True)
    zero_points_invalid: bool = _param(True, "points at exactly (0, 0, 0), many drivers' 'no return', are invalid "
                                       "too", runtime=True)
    max_range: float = _param(300.0, "metres from the sensor; farther points are invalid like NaN ones",
                              runtime=True, min=0.1, max=1e5)


_PRESET = "NaN (.nan in YAML) = the preset's value"


@dataclass
class AFIParams:
    enabled: bool = _param(True, "AFI refinement and temporal smoothing; false = the raw network labels",
                           runtime=True)
    input: Literal["labels", "probabilities"] = _param(
        "labels", "what AFI refines: the network's labels as one-hot vectors (the reference) or its softmax "
        "probabilities", runtime=True)
    preset: Literal["nuscenes", "kitti"] = _param("nuscenes", "sensor defaults of the ground step", runtime=True)
    ground: Literal["ransac_ring", "none"] = _param("ransac_ring", "ground step of AFI: ransac_ring fits a plane by RANSAC to "
                                                   "the low points of a ring around the sensor (its inliers keep "
                                                   "flat classes); none skips it", runtime=True)
    ground_z_max: Optional[float] = _param(None, "metres, sensor frame: ring points below this are ground "
                                           "candidates", runtime=True, unset=_PRESET)
    ground_ring_min: Optional[float] = _param(None, "metres: inner radius of the ground ring", runtime=True,
                                              min=0.0, max=1e4, unset=_PRESET)
    ground_ring_max: Optional[float] = _param(None, "metres: outer radius of the ground ring", runtime=True,
                                              min=0.0, max=1e4, unset=_PRESET)
    input_min_range: Optional[float] = _param(None, "metres: AFI inputs closer than this (the ego body) are "
                                              "dropped", runtime=True, min=0.0, max=1e4, unset=_PRESET)
    base_points: int = _param(4096, "AFI pyramid centres at the first level", runtime=True, min=3, max=1 << 20)

    def __post_init__(self) -> None:
        for name in ("ground_z_max", "ground_ring_min", "ground_ring_max", "input_min_range"):
            value = getattr(self, name)
            if value is not None and math.isnan(value):  # the ROS sentinel of "unset"
                setattr(self, name, None)


@dataclass
class TemporalParams:
    history: int = _param(3, "previous frames that vote; 0 = per-frame AFI only", runtime=True, min=0, max=100)
    match_radius: float = _param(0.5, "metres: farther previous-frame neighbours do not vote", runtime=True,
                                 min=0.001, max=100.0)
    match_k: int = _param(3, "previous-frame neighbours per point", runtime=True, min=1, max=64)
    decay: float = _param(0.7, "a frame of age a votes with weight decay**a", runtime=True, min=0.001, max=1.0)
    pose_source: Literal["auto", "odometry", "tf", "none"] = _param(
        "auto", "where poses come from: odometry (~/input/odometry), tf (/tf, needs tf2_msgs), auto = both, "
        "none")
    fixed_frame: str = _param("", "frame the poses are in; empty = the odometry's header.frame_id", runtime=True)
    base_frame: str = _param("", "frame sensor_to_base attaches the cloud frame to; empty = the odometry's "
                             "child_frame_id", runtime=True)
    sensor_to_base: list[float] = _param([], f"cloud frame -> base_frame as {_SEVEN}; empty = from /tf_static")
    pose_tolerance_s: float = _param(0.1, "seconds: a cloud this much newer than the latest pose still uses it",
                                     runtime=True, min=0.0, max=10.0)


@dataclass
class CameraParams:
    names: list[str] = _param([], "cameras to overlay, e.g. [CAM_FRONT]: ~/input/<name>/image and "
                              ".../camera_info in, ~/output/<name>/overlay out")
    transport: Literal["raw", "compressed"] = _param(
        "raw", "image type on ~/input/<name>/image: raw = sensor_msgs/Image, compressed = CompressedImage")
    sync_tolerance_s: float = _param(0.05, "seconds: an image matches a cloud when their stamps differ by at most "
                                     "this", runtime=True, min=0.0, max=10.0)
    queue_depth: int = _param(4, "images kept per camera for matching", min=1, max=1000)
    point_radius: int = _param(2, "drawn point half-size in pixels", runtime=True, min=0, max=50)
    occlusion: bool = _param(True, "hide points behind nearer ones (z-buffer)", runtime=True)
    lidar_to_camera: list[float] = _param([], f"lidar -> camera-optical transforms, one {_SEVEN} per name in "
                                          "order, flattened; empty = look each up in /tf")


@dataclass
class OutputParams:
    legend_frame: str = _param("", "frame of the class legend; empty = the frame of the first cloud")
    legend_text_height: float = _param(1.5, "height of the legend markers' text in RViz, metres", min=0.01, max=100.0)
    legend_position: list[float] = _param([0.0, 30.0, 5.0], "[x, y, z] of the legend's first line in its frame")
    max_processing_ms: float = _param(100.0, "/diagnostics warns above this (the 10 Hz frame period)",
                                      runtime=True, min=0.1, max=1e6)
    diagnostics_period_s: float = _param(1.0, "seconds between /diagnostics messages", min=0.01, max=3600.0)
    warn_throttle_s: float = _param(5.0, "one warning per call site per this many seconds", runtime=True,
                                    min=0.0, max=3600.0)


@dataclass
class NodeConfig:
    model: ModelParams = field(default_factory=ModelParams)
    input: InputParams = field(default_factory=InputParams)
    afi: AFIParams = field(default_factory=AFIParams)
    temporal: TemporalParams = field(default_factory=TemporalParams)
    cameras: CameraParams = field(default_factory=CameraParams)
    output: OutputParams = field(default_factory=OutputParams)
    pipeline: PipelineParams = field(default_factory=PipelineParams)

    def check(self) -> None:
        values = flat_defaults(self)
        for spec in parameter_table():  # the declared ranges, as ROS enforces them on `param set`
            value = values[spec.name]
            if spec.min is not None and value is not None and not spec.min <= value <= spec.max:
                raise ConfigError(f"{spec.name} must be in [{spec.min:g}, {spec.max:g}], got {value!r}")
        if self.temporal.sensor_to_base and len(self.temporal.sensor_to_base) != 7:
            raise ConfigError(f"temporal.sensor_to_base needs {_SEVEN} or []")
        n = len(self.cameras.names)
        if self.cameras.lidar_to_camera and len(self.cameras.lidar_to_camera) != 7 * n:
            raise ConfigError(f"cameras.lidar_to_camera needs 7 numbers per camera ({7 * n} for {n}) or []")
        if len(set(self.cameras.names)) != n or any(not c or "/" in c for c in self.cameras.names):
            raise ConfigError(f"cameras.names must be distinct names without '/': {self.cameras.names}")
        if len(self.output.legend_position) != 3:
            raise ConfigError("output.legend_position needs [x, y, z]")
        try:
            self.afi_config()
            self.temporal_config().check()
        except ValueError as exc:
            raise ConfigError(f"afi / temporal parameters: {exc}") from exc

    def afi_config(self) -> Optional[AFIConfig]:
        """The AFI configuration, or None when AFI is off."""
        if not self.afi.enabled:
            return None
        overrides: dict[str, Any] = {"ground": self.afi.ground, "base_points": self.afi.base_points}
        for name in ("ground_z_max", "ground_ring_min", "ground_ring_max", "input_min_range"):
            if getattr(self.afi, name) is not None:
                overrides[name] = getattr(self.afi, name)
        if self.afi.preset == "kitti":
            return AFIConfig.kitti(**overrides)
        cfg = AFIConfig(**overrides)
        cfg.check()
        return cfg

    def temporal_config(self) -> TemporalConfig:
        t = self.temporal
        return TemporalConfig(history=t.history, match_k=t.match_k, match_radius=t.match_radius, decay=t.decay)


def flat_defaults(cfg: Optional[NodeConfig] = None) -> dict[str, Any]:
    """{'afi.enabled': True, ...}: every ROS parameter name with its value in ``cfg`` (default: the defaults)."""
    out: dict[str, Any] = {}

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                out[prefix + f.name] = value

    walk(cfg or NodeConfig(), "")
    return out


@dataclass(frozen=True)
class ParamSpec:
    """One declared ROS parameter, as data (the node declares these; a reference can be generated from them)."""

    name: str  # dotted ROS name, e.g. "afi.enabled"
    default: Any  # the declared value, ROS-typed (an unset optional number is NaN)
    type: str  # ROS type: bool | integer | double | string | string_array | double_array
    description: str
    read_only: bool  # fixed at start-up: `ros2 param set` is refused
    min: Optional[float] = None  # inclusive range of a number (integer or double)
    max: Optional[float] = None
    choices: tuple[str, ...] = ()  # the allowed strings, if fixed
    unset: str = ""  # what the unset sentinel (NaN) means


_ROS_TYPES = {bool: "bool", int: "integer", float: "double", str: "string", list[str]: "string_array",
              list[float]: "double_array"}


def parameter_table() -> list[ParamSpec]:
    """Every parameter of the node in declaration order: name, default, ROS type, description, range,
    read-only flag.  Built from the dataclass fields above (their defaults and metadata), the one home of both."""
    out: list[ParamSpec] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            choices: tuple[str, ...] = ()
            if typing.get_origin(tp) is Literal:
                choices, tp = typing.get_args(tp), str
            elif typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType")):
                tp = next(a for a in typing.get_args(tp) if a is not type(None))
                default = math.nan if default is None else default
            meta = f.metadata
            out.append(ParamSpec(prefix + f.name, default, _ROS_TYPES[tp], meta["description"],
                                 read_only=not meta["runtime"], min=meta["min"], max=meta["max"], choices=choices,
                                 unset=meta["unset"]))

    walk(NodeConfig, "")
    return out


def ros_values(cfg: NodeConfig) -> dict[str, Any]:
    """Every ROS parameter name with its value in ``cfg``, ROS-typed (None -> NaN, the unset sentinel)."""
    return {k: math.nan if v is None else v for k, v in flat_defaults(cfg).items()}


def unknown_parameters(names: Any) -> list[str]:
    """The names among ``names`` that are not parameters of the node, each with a close match if there is one
    (``afi.enabeld (did you mean afi.enabled?)``): a misspelt override would otherwise be silently ignored."""
    known = set(flat_defaults())
    out = []
    for name in sorted(set(names) - known):
        hint = difflib.get_close_matches(name, known, n=1)
        out.append(name + (f" (did you mean {hint[0]}?)" if hint else ""))
    return out


def from_flat(values: dict[str, Any], source: str = "parameters") -> NodeConfig:
    """NodeConfig from dotted names (as ROS gives them); unknown names and wrong types raise ConfigError."""
    for name in values:
        if "." not in name:
            raise ConfigError(f"{source}: unknown parameter {name!r}")
    # from_dict checks the result (NodeConfig.check) as it builds it
    plain = {k: list(v) if isinstance(v, (tuple, array.array)) else v for k, v in values.items()}  # rclpy arrays
    return from_dict(NodeConfig, nest_dotted(plain), source)


def load_params_file(path: str | Path, node_name: str = "ssov_segmenter") -> NodeConfig:
    """NodeConfig from a ROS 2 parameters file (``/**:`` or ``<node_name>:`` -> ``ros__parameters``)."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read parameters file {path}: {exc}") from exc
    section = None
    for key in ("/**", node_name, "/" + node_name):
        if isinstance(doc, dict) and isinstance(doc.get(key), dict) and "ros__parameters" in doc[key]:
            section = doc[key]["ros__parameters"]
            break
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: no '/**' or '{node_name}' section with ros__parameters")
    return from_dict(NodeConfig, section, str(path))


def model_search_bases() -> list[Path]:
    """Where a relative model path is looked up, in order: the installed package's share directory
    (share/ssov_ros, found through the ament index), the working directory (the path as given), and the source
    tree when this module runs from one (a checkout, not an install: there the parent is site-packages)."""
    bases = []
    if os.environ.get("AMENT_PREFIX_PATH"):
        try:
            from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

            bases.append(Path(get_package_share_directory(PACKAGE)))
        except (ImportError, PackageNotFoundError, ValueError, OSError):
            pass
    bases.append(Path.cwd())
    if (REPO / "package.xml").is_file():
        bases.append(REPO)
    return list(dict.fromkeys(b.resolve() for b in bases))


def resolve_model_path(path: str) -> Path:
    """The model file or package directory ``path`` names: an absolute path as is, a relative one searched in
    :func:`model_search_bases`.  The default model (:data:`DEFAULT_MODEL`, the exported package) falls back to the
    checkpoint it is exported from where the package was not built (a `colcon build` without `make export`):
    the torch backend runs it.  Any other missing path raises ConfigError listing where it looked; a missing
    exported package whose checkpoint exists says how to export it.
    """
    p = Path(os.path.expanduser(path))
    bases = [Path("/")] if p.is_absolute() else model_search_bases()
    candidates = list(dict.fromkeys((b / p).resolve() for b in bases))
    for c in candidates:
        if c.exists():  # a checkpoint file, an exported package directory or its model.yaml / model.onnx
            return c
    package = p.parent if p.name in (SIDECAR_FILE, ONNX_FILE) else p
    if package.suffix == PACKAGE_SUFFIX:
        checkpoint = package.with_suffix(".pt")
        for base in bases:
            if (base / checkpoint).is_file():
                if path == DEFAULT_MODEL:
                    return (base / checkpoint).resolve()
                # relative paths as given when they are relative to the working directory, else absolute ones
                ckpt, out = ((checkpoint, package) if base == Path.cwd().resolve()
                             else (base / checkpoint, base / package))
                raise ConfigError(f"model package {path!r} not found, but the checkpoint it is exported from is "
                                  f"({base / checkpoint}): export it once with `ssov-export onnx --checkpoint {ckpt} "
                                  f"--out {out}`, or set model.path to the .pt")
    raise ConfigError(f"model file {path!r} not found (looked in: {', '.join(str(c) for c in candidates)})")
