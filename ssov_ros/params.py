"""The node's parameters as a typed dataclass tree, ROS-free: defaults, validation, flat ROS names.

ROS parameter names are the dotted paths of the fields (``afi.enabled``, ``temporal.history``); the file
``config/ssov_node.yaml`` lists every one with its default, and the README's "ROS 2 node" section explains them.
Model-bound values (classes, palette, voxel grid, input fields) are NOT parameters: they come from the model
file (:class:`ssov_train.inference.ModelSpec`); ``model.expect_classes`` only checks them.
"""

from __future__ import annotations

import dataclasses
import os
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


@dataclass
class ModelParams:
    path: str = DEFAULT_MODEL  # an exported package or a .pt checkpoint; relative: cwd, package share dir, repository
    backend: str = "auto"  # auto (by file type) | torch | onnxruntime | tensorrt
    device: str = "cpu"  # torch backend: cpu | cuda | cuda:N
    # torch / onnxruntime intra-op threads; 0 = library default (every core): fastest on an idle machine, but
    # OpenMP threads collapse when the cores are shared with other nodes (measured 9x slower, README)
    threads: int = 1
    expect_classes: list[str] = field(default_factory=list)  # if set, the model's class names must equal it
    warmup: bool = True  # one inference on a synthetic scan at start-up: the first real cloud is not slow


@dataclass
class PipelineParams:
    # AFI of cloud t (plus publishing) on a worker thread while the callback runs the network of cloud t+1: on
    # two cores throughput is the slower half, not the sum (README "ROS 2 node"). Same outputs; a cloud still
    # waiting for the worker when a newer one is inferred is dropped (counted in /diagnostics)
    enabled: bool = True


@dataclass
class InputParams:
    intensity_scale: float = 1.0  # multiplies the cloud's intensity to the model's training range
    drop_invalid_points: bool = False  # NaN/Inf points: False = published with label 0, True = removed
    zero_points_invalid: bool = True  # points at exactly (0, 0, 0), many drivers' "no return", are invalid too
    max_range: float = 300.0  # metres from the sensor; farther points are invalid too (corrupt or not lidar)


@dataclass
class AFIParams:
    enabled: bool = True  # per-frame AFI refinement (and the temporal smoothing below)
    preset: Literal["nuscenes", "kitti"] = "nuscenes"  # sensor defaults of the ground step
    ground: Literal["ransac_ring", "none"] = "ransac_ring"
    ground_z_max: Optional[float] = None  # metres, sensor frame; None = the preset's
    ground_ring_min: Optional[float] = None
    ground_ring_max: Optional[float] = None
    input_min_range: Optional[float] = None  # metres; inputs closer than this (ego body) are dropped
    base_points: int = 4096


@dataclass
class TemporalParams:
    history: int = 3  # previous frames that vote (0 = per-frame AFI only)
    match_radius: float = 0.5  # metres
    match_k: int = 3
    decay: float = 0.7
    pose_source: Literal["auto", "odometry", "tf", "none"] = "auto"
    fixed_frame: str = ""  # frame the poses are in; "" = the odometry's header.frame_id
    base_frame: str = ""  # frame sensor_to_base attaches the cloud frame to; "" = the odometry's child frame
    sensor_to_base: list[float] = field(default_factory=list)  # [x, y, z, qx, qy, qz, qw]; [] = from /tf_static
    pose_tolerance_s: float = 0.1  # a cloud this much newer than the last pose still uses that pose


@dataclass
class CameraParams:
    names: list[str] = field(default_factory=list)  # e.g. [CAM_FRONT]: ~/input/<name>/image, .../camera_info
    transport: Literal["raw", "compressed"] = "raw"  # sensor_msgs/Image or CompressedImage on .../image
    sync_tolerance_s: float = 0.05  # an image matches a cloud when their stamps differ by at most this
    queue_depth: int = 4  # images kept per camera for matching
    point_radius: int = 2  # drawn point half-size in pixels
    occlusion: bool = True  # z-buffer test of the projection (hidden points are not drawn)
    # lidar -> camera-optical transforms, one [x, y, z, qx, qy, qz, qw] per name in order, flattened;
    # [] = look each up in /tf (camera_info frame_id <- cloud frame)
    lidar_to_camera: list[float] = field(default_factory=list)


@dataclass
class OutputParams:
    legend_frame: str = ""  # "" = the frame of the first cloud
    legend_text_height: float = 1.5  # metres
    legend_position: list[float] = field(default_factory=lambda: [0.0, 30.0, 5.0])  # first line, legend frame
    max_processing_ms: float = 100.0  # /diagnostics warns above this (the 10 Hz frame period)
    diagnostics_period_s: float = 1.0
    warn_throttle_s: float = 5.0  # one warning per call site per this many seconds


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
        if not self.input.max_range > 0:
            raise ConfigError(f"input.max_range must be > 0, got {self.input.max_range}")
        if self.model.threads < 0:
            raise ConfigError(f"model.threads must be >= 0, got {self.model.threads}")
        if self.temporal.pose_tolerance_s < 0 or self.cameras.sync_tolerance_s < 0:
            raise ConfigError("temporal.pose_tolerance_s and cameras.sync_tolerance_s must be >= 0")
        if self.temporal.sensor_to_base and len(self.temporal.sensor_to_base) != 7:
            raise ConfigError("temporal.sensor_to_base needs [x, y, z, qx, qy, qz, qw] or []")
        n = len(self.cameras.names)
        if self.cameras.lidar_to_camera and len(self.cameras.lidar_to_camera) != 7 * n:
            raise ConfigError(f"cameras.lidar_to_camera needs 7 numbers per camera ({7 * n} for {n}) or []")
        if len(set(self.cameras.names)) != n or any(not c or "/" in c for c in self.cameras.names):
            raise ConfigError(f"cameras.names must be distinct names without '/': {self.cameras.names}")
        if self.cameras.queue_depth < 1 or self.cameras.point_radius < 0:
            raise ConfigError("cameras.queue_depth must be >= 1 and cameras.point_radius >= 0")
        if len(self.output.legend_position) != 3:
            raise ConfigError("output.legend_position needs [x, y, z]")
        if self.output.max_processing_ms <= 0 or self.output.diagnostics_period_s <= 0:
            raise ConfigError("output.max_processing_ms and output.diagnostics_period_s must be > 0")
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


def field_types() -> dict[str, Any]:
    """ROS parameter name -> the field's annotation (as a string), for declaring typed parameters."""
    out: dict[str, Any] = {}

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                walk(type(default), f"{prefix}{f.name}.")
            else:
                out[prefix + f.name] = f.type

    walk(NodeConfig, "")
    return out


def from_flat(values: dict[str, Any], source: str = "parameters") -> NodeConfig:
    """NodeConfig from dotted names (as ROS gives them); unknown names and wrong types raise ConfigError."""
    for name in values:
        if "." not in name:
            raise ConfigError(f"{source}: unknown parameter {name!r}")
    # from_dict checks the result (NodeConfig.check) as it builds it
    return from_dict(NodeConfig, nest_dotted({k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}),
                     source)


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


def resolve_model_path(path: str) -> Path:
    """The model file or package directory ``path`` names: an absolute path as is, a relative one searched in the
    working directory, the installed package's share directory and the repository.  A missing one raises
    ConfigError listing where it looked; a missing exported package whose checkpoint exists says how to export it.
    """
    p = Path(os.path.expanduser(path))
    if p.is_absolute():
        bases = [Path("/")]
    else:
        bases = [Path.cwd()]
        if os.environ.get("AMENT_PREFIX_PATH"):
            try:
                from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

                bases.append(Path(get_package_share_directory(PACKAGE)))
            except (ImportError, PackageNotFoundError, ValueError, OSError):
                pass
        bases.append(REPO)
    bases = list(dict.fromkeys(b.resolve() for b in bases))
    candidates = list(dict.fromkeys((b / p).resolve() for b in bases))
    for c in candidates:
        if c.exists():  # a checkpoint file, an exported package directory or its model.yaml / model.onnx
            return c
    package = p.parent if p.name in (SIDECAR_FILE, ONNX_FILE) else p
    if package.suffix == PACKAGE_SUFFIX:
        checkpoint = package.with_suffix(".pt")
        for base in bases:
            if (base / checkpoint).is_file():
                # relative paths as given when they are relative to the working directory, else absolute ones
                ckpt, out = ((checkpoint, package) if base == Path.cwd().resolve()
                             else (base / checkpoint, base / package))
                hint = " (or `make export` in the repository)" if package.name == Path(DEFAULT_MODEL).name else ""
                raise ConfigError(f"model package {path!r} not found, but the checkpoint it is exported from is "
                                  f"({base / checkpoint}): export it once with `ssov-export onnx --checkpoint {ckpt} "
                                  f"--out {out}`{hint}, or set model.path to the .pt")
    raise ConfigError(f"model file {path!r} not found (looked in: {', '.join(str(c) for c in candidates)})")
