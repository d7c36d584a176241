"""Lidar presets of the synthetic world: beam tables, mounts, intensity and dropout models, as data.

The presets live in ``config/sensors.yaml`` (typed and validated here, with errors naming the key at fault);
:func:`load_presets` reads them, :func:`lidar_preset` picks one by name.  A preset says where the lidar sits on
the ego car, which rays it fires, how strong each echo reads and which echoes never come back.  The default
preset (the nuScenes HDL-32E) reproduces the world the shipped model was trained on bit for bit.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np

from ...config import from_dict, load_config
from ...errors import ConfigError
from ...geometry.transforms import make_transform
from . import models as m

SENSORS_FILE = Path(__file__).resolve().parents[3] / "config" / "sensors.yaml"
NEAR_FIELD_M = 1.0  # the range falloff stops growing closer than this (real receivers saturate)
OUTPUT_RANGES = {"unit": (0.0, 1.0, np.float32), "uint8": (0, 255, np.uint8), "uint16": (0, 65535, np.uint16)}
REFLECTIVITY_TABLES = {"nuscenes_calibrated": m.REFLECTIVITY, "nir_905nm": m.NIR_REFLECTIVITY}


@dataclass(frozen=True)
class EvenBeams:
    """``count`` beams evenly spaced from ``lowest`` to ``highest`` (degrees)."""

    lowest: float
    highest: float
    count: int

    def check(self) -> None:
        if self.count < 2 or not self.lowest < self.highest:
            raise ValueError(f"need count >= 2 and lowest < highest, got {self.count} beams "
                             f"from {self.lowest} to {self.highest}")


@dataclass(frozen=True)
class Mount:
    translation: tuple[float, float, float]  # lidar position in the ego frame (z = mounting height)
    rotation: tuple[float, float, float, float]  # lidar -> ego quaternion (w, x, y, z)

    def check(self) -> None:
        if abs(np.linalg.norm(self.rotation) - 1.0) > 1e-6:
            raise ValueError(f"rotation {list(self.rotation)} is not a unit quaternion")
        if self.translation[2] <= 0:
            raise ValueError(f"translation z (the mounting height) must be > 0, got {self.translation[2]}")


@dataclass(frozen=True)
class Intensity:
    reflectivity: Literal["nuscenes_calibrated", "nir_905nm"]
    gain: float
    incidence_floor: float
    range_exponent: float
    reference_range: float
    speckle_sigma: float
    output: Literal["unit", "uint8", "uint16"]

    def check(self) -> None:
        if self.gain <= 0 or self.reference_range <= 0:
            raise ValueError(f"gain and reference_range must be > 0, got {self.gain}, {self.reference_range}")
        if not 0 <= self.incidence_floor <= 1:
            raise ValueError(f"incidence_floor must be in [0, 1], got {self.incidence_floor}")
        if self.range_exponent < 0 or self.speckle_sigma < 0:
            raise ValueError(f"range_exponent and speckle_sigma must be >= 0, got {self.range_exponent}, "
                             f"{self.speckle_sigma}")

    @property
    def dtype(self) -> type:
        return OUTPUT_RANGES[self.output][2]

    def signal(self, material: np.ndarray, cos_incidence: np.ndarray, distance: np.ndarray,
               speckle: np.ndarray) -> np.ndarray:
        """Echo strength before quantisation, in the output's units (see config/sensors.yaml)."""
        value = self.gain * REFLECTIVITY_TABLES[self.reflectivity][material] \
            * (self.incidence_floor + (1 - self.incidence_floor) * cos_incidence)
        if self.range_exponent:  # skipped at 0: today's world multiplies by nothing here
            value = value * (self.reference_range / np.maximum(distance, NEAR_FIELD_M)) ** self.range_exponent
        return value * speckle

    def quantise(self, value: np.ndarray) -> np.ndarray:
        """Clip to the sensor's range; integer outputs are rounded to their levels. In the output's dtype."""
        low, high, dtype = OUTPUT_RANGES[self.output]
        clipped = np.clip(value, low, high)
        return (clipped if self.output == "unit" else np.round(clipped)).astype(dtype)


@dataclass(frozen=True)
class Detection:
    reflectivity: float  # a target of this diffuse reflectivity ...
    range_at_reference: float  # ... at normal incidence is detected up to here (metres)

    def check(self) -> None:
        if self.reflectivity <= 0 or self.range_at_reference <= 0:
            raise ValueError(f"reflectivity and range_at_reference must be > 0, got {self.reflectivity}, "
                             f"{self.range_at_reference}")


@dataclass(frozen=True)
class Dropout:
    near: float  # random no-return probability at 0 m ...
    far: float  # ... rising linearly to this at max_range
    detection: Optional[Detection] = None

    def check(self) -> None:
        if not (0 <= self.near <= 1 and 0 <= self.far <= 1):
            raise ValueError(f"near and far are probabilities in [0, 1], got {self.near}, {self.far}")


@dataclass(frozen=True)
class LidarPreset:
    """One lidar; its beams are either listed (``elevations_deg``) or ``evenly_spaced``."""

    description: str
    azimuth_steps: int
    max_range: float
    min_range: float
    range_noise: float
    mount: Mount
    intensity: Intensity
    dropout: Dropout
    elevations_deg: Optional[list[float]] = None
    evenly_spaced: Optional[EvenBeams] = None

    def check(self) -> None:
        if (self.elevations_deg is None) == (self.evenly_spaced is None):
            raise ValueError("give the beams either as elevations_deg (a list) or as evenly_spaced, not both")
        el = self.elevations
        if len(el) < 1 or (np.diff(el) <= 0).any():
            raise ValueError("elevations_deg must list the beams from the lowest up, strictly increasing")
        if (np.abs(el) >= 90).any():
            raise ValueError("elevations_deg must lie within (-90, 90) degrees")
        if self.azimuth_steps < 8:
            raise ValueError(f"azimuth_steps must be >= 8, got {self.azimuth_steps}")
        if not 0 <= self.min_range < self.max_range:
            raise ValueError(f"need 0 <= min_range < max_range, got {self.min_range}, {self.max_range}")
        if self.range_noise < 0:
            raise ValueError(f"range_noise must be >= 0, got {self.range_noise}")

    @property
    def elevations(self) -> np.ndarray:
        """Beam elevations (degrees), ring 0 first."""
        e = self.evenly_spaced
        if e is not None:
            return np.linspace(e.lowest, e.highest, e.count)
        return np.asarray(self.elevations_deg, dtype=np.float64)

    @property
    def beams(self) -> int:
        return len(self.elevations)

    @property
    def to_ego(self) -> np.ndarray:
        """lidar -> ego (4x4)."""
        return make_transform(self.mount.rotation, self.mount.translation)


def sensors_file() -> Path:
    """config/sensors.yaml of the source tree, else the installed share/ssov_ros/config/sensors.yaml."""
    prefixes = [sys.prefix, *filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep))]
    candidates = [SENSORS_FILE, *(Path(p) / "share" / "ssov_ros" / "config" / "sensors.yaml" for p in prefixes)]
    return next((c for c in candidates if c.is_file()), SENSORS_FILE)


@dataclass(frozen=True)
class SensorsFile:
    """config/sensors.yaml: the presets by name, and the one used when none is named."""

    default: str
    presets: dict[str, LidarPreset]

    def check(self) -> None:
        if not self.presets:
            raise ValueError("presets must name at least one preset")
        reserved = [n for n in self.presets if n == "all" or "," in n]
        if reserved:
            raise ValueError(f"preset names {reserved}: 'all' and names with ',' are reserved for --sensor")
        if self.default not in self.presets:
            raise ValueError(f"default {self.default!r} is not a preset ({sorted(self.presets)})")


def parse_presets(data: dict, source: str) -> SensorsFile:
    """The presets of a parsed sensors file; ConfigError naming the key at fault."""
    return from_dict(SensorsFile, data, source)


@lru_cache(maxsize=4)
def load_presets(path: Optional[str] = None) -> SensorsFile:
    """The presets of ``path`` (default: config/sensors.yaml)."""
    return load_config(SensorsFile, Path(path) if path else sensors_file())


def lidar_preset(name: Optional[str] = None) -> LidarPreset:
    """A preset by name (None: the default one)."""
    sensors = load_presets()
    name = sensors.default if name is None else name
    if name not in sensors.presets:
        raise ConfigError(f"unknown lidar preset {name!r}; known: {', '.join(sorted(sensors.presets))}")
    return sensors.presets[name]


def resolve_presets(spec: Union[None, str, list[str], tuple[str, ...]]) -> tuple[str, ...]:
    """Preset names from a CLI-style spec: None (the default), 'all', 'a,b' or a list of names; checked."""
    sensors = load_presets()
    if spec is None:
        return (sensors.default,)
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"]:
        return tuple(sensors.presets)
    if not names:
        raise ConfigError("no lidar preset given")
    for n in names:
        lidar_preset(n)
    if len(set(names)) != len(names):
        raise ConfigError(f"lidar presets listed twice: {names}")
    return tuple(names)
