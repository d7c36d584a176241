"""PointCloud2 <-> numpy columns, pure numpy (no rclpy at import), duck-typed over message classes.

Works on rclpy `sensor_msgs.msg.PointCloud2` and on `rosbags` PointCloud2 objects alike: only the attributes
height, width, fields[].name/.offset/.datatype/.count, is_bigendian, point_step, row_step and data are read.
Any layout is accepted by field name and type (XYZ, XYZI, nuScenes x,y,z,intensity,ring, XYZIRC, Autoware
XYZIRCAEDT with uint8/uint16 fields, organised clouds, padding inside point_step or row_step, either
endianness); anything that cannot be read raises one `CloudError` that says why.
"""

from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Any

import numpy as np

from ssov_train.errors import DataError

# sensor_msgs/PointField datatype constants -> numpy scalar type.
DATATYPES: dict[int, np.dtype] = {
    1: np.dtype(np.int8),
    2: np.dtype(np.uint8),
    3: np.dtype(np.int16),
    4: np.dtype(np.uint16),
    5: np.dtype(np.int32),
    6: np.dtype(np.uint32),
    7: np.dtype(np.float32),
    8: np.dtype(np.float64),
}
DATATYPE_OF: dict[np.dtype, int] = {dt: code for code, dt in DATATYPES.items()}

# Field names read as intensity, first match wins (Ouster/Hesai drivers call it reflectivity).
INTENSITY_NAMES = ("intensity", "i", "reflectivity")

Field = tuple[str, int, int, int]  # (name, offset, datatype, count), as in sensor_msgs/PointField


class CloudError(DataError):
    """A PointCloud2 message cannot be read (empty, inconsistent sizes, unknown datatypes, missing xyz)."""


@dataclass(frozen=True)
class Cloud:
    """One parsed cloud, flattened row-major to N = height * width points (organised clouds keep their shape
    in height/width so results can be reshaped back)."""

    xyz: np.ndarray  # (N, 3) float32, NaN/Inf kept as they came
    intensity: np.ndarray  # (N,) float32, zeros when the cloud has no intensity field
    valid: np.ndarray  # (N,) bool: all three coordinates finite
    columns: dict[str, np.ndarray]  # every field, native byte order; (N,) or (N, count) when count > 1
    height: int
    width: int
    has_intensity: bool
    intensity_issue: str = ""  # why intensity reads as zeros ("" when the cloud has a usable intensity field)

    @property
    def num_points(self) -> int:
        return self.height * self.width


def pack_cloud(columns: dict[str, np.ndarray]) -> tuple[list[Field], int, bytes]:
    """Pack equal-length (N,) columns into little-endian PointCloud2 bytes, fields in dict order, no padding.

    Returns (fields as (name, offset, datatype, count), point_step, data).
    """
    if not columns:
        raise CloudError("pack_cloud: no columns given")
    lengths = {name: np.shape(col) for name, col in columns.items()}
    n = None
    descr = []
    fields: list[Field] = []
    offset = 0
    for name, col in columns.items():
        col = np.asarray(col)
        if col.ndim != 1:
            raise CloudError(f"pack_cloud: column {name!r} has shape {col.shape}, expected (N,)")
        if n is None:
            n = col.shape[0]
        elif col.shape[0] != n:
            raise CloudError(f"pack_cloud: columns have different lengths {lengths}")
        dt = col.dtype.newbyteorder("=")
        if dt not in DATATYPE_OF:
            raise CloudError(f"pack_cloud: column {name!r} has dtype {col.dtype}, not a PointField datatype "
                             f"(int8, uint8, int16, uint16, int32, uint32, float32, float64)")
        descr.append((name, dt.newbyteorder("<")))
        fields.append((name, offset, DATATYPE_OF[dt], 1))
        offset += dt.itemsize
    packed = np.empty(n, dtype=np.dtype(descr))
    for name, col in columns.items():
        packed[name] = col
    return fields, offset, packed.tobytes()


def _data_as_uint8(data: Any) -> np.ndarray:
    """Zero-copy uint8 view of msg.data (array.array for rclpy, ndarray for rosbags, bytes, or a list)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype.itemsize == 1 else np.frombuffer(data.tobytes(), np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError):
        try:
            return np.asarray(data, dtype=np.uint8).reshape(-1)
        except (TypeError, ValueError, OverflowError) as exc:
            raise CloudError(f"cloud data is not a byte buffer ({type(data).__name__})") from exc


def parse_fields(msg: Any) -> list[Field]:
    """The message's fields as validated (name, offset, datatype, count) tuples."""
    try:
        point_step = int(msg.point_step)
        raw = [(str(f.name), int(f.offset), int(f.datatype), int(f.count)) for f in msg.fields]
    except (AttributeError, TypeError, ValueError) as exc:
        raise CloudError(f"not a PointCloud2 message ({exc})") from exc
    seen: set[str] = set()
    out: list[Field] = []
    for name, offset, datatype, count in raw:
        if not name:
            raise CloudError("cloud has a field with an empty name")
        if name in seen:
            raise CloudError(f"cloud has field {name!r} twice")
        seen.add(name)
        if datatype not in DATATYPES:
            raise CloudError(f"field {name!r} has unknown datatype {datatype} (PointField datatypes are 1..8)")
        if count < 1:
            # count 0 appears in some drivers' padding fields; it holds no data, so skip it.
            continue
        end = offset + DATATYPES[datatype].itemsize * count
        if offset < 0 or end > point_step:
            raise CloudError(f"field {name!r} (offset {offset}, {count} x {DATATYPES[datatype]}) does not fit "
                             f"in point_step {point_step}")
        out.append((name, offset, datatype, count))
    return out


def read_cloud(msg: Any, *, fields: tuple[str, ...] | None = None,
               intensity_names: tuple[str, ...] = INTENSITY_NAMES) -> Cloud:
    """Parse a PointCloud2 (rclpy or rosbags) into numpy columns; raise CloudError naming the problem.

    fields: names of the columns to return in Cloud.columns (default: all); x, y, z and intensity are always read.
    """
    try:
        height, width = int(msg.height), int(msg.width)
        point_step, row_step = int(msg.point_step), int(msg.row_step)
        big_endian = bool(msg.is_bigendian)
        data = msg.data
    except (AttributeError, TypeError, ValueError) as exc:
        raise CloudError(f"not a PointCloud2 message ({exc})") from exc
    if height < 0 or width < 0 or height * width == 0:
        raise CloudError(f"empty cloud (height {height}, width {width})")
    if point_step <= 0:
        raise CloudError(f"point_step is {point_step}")
    if row_step < width * point_step:
        raise CloudError(f"row_step {row_step} < width {width} x point_step {point_step}")
    parsed = parse_fields(msg)
    names = {f[0] for f in parsed}
    missing = [c for c in "xyz" if c not in names]
    if missing:
        raise CloudError(f"cloud has no {', '.join(missing)} field (fields: {sorted(names)})")
    buf = _data_as_uint8(data)
    if buf.size != row_step * height:
        raise CloudError(f"data length {buf.size} does not match row_step {row_step} x height {height}")
    n = height * width
    if row_step != width * point_step:  # padding at the end of each row: drop it (one copy)
        buf = np.ascontiguousarray(buf.reshape(height, row_step)[:, : width * point_step]).reshape(-1)

    order = ">" if big_endian else "<"
    intensity_name = next((nm for nm in intensity_names if nm in names), None)
    wanted = None if fields is None else set(fields) | {"x", "y", "z", intensity_name}
    columns: dict[str, np.ndarray] = {}
    for name, offset, datatype, count in parsed:
        if wanted is not None and name not in wanted:
            continue
        dt = DATATYPES[datatype].newbyteorder(order)
        shape, strides = ((n,), (point_step,)) if count == 1 else ((n, count), (point_step, dt.itemsize))
        view = np.ndarray(shape=shape, dtype=dt, buffer=buf, offset=offset, strides=strides)
        columns[name] = view.astype(DATATYPES[datatype], copy=True)  # native order, contiguous, owns its data

    for c in "xyz":
        if columns[c].ndim != 1:
            raise CloudError(f"field {c!r} has count {columns[c].shape[1]}, expected 1")
    with np.errstate(invalid="ignore", over="ignore"):  # float64 beyond float32 range becomes inf: invalid
        xyz = np.stack([columns["x"], columns["y"], columns["z"]], axis=1).astype(np.float32, copy=False)
        valid = np.isfinite(xyz).all(axis=1)
    issue = ""
    if intensity_name is not None and columns[intensity_name].ndim == 1:
        with np.errstate(over="ignore"):  # float64 beyond float32 range becomes inf, reported by the caller
            intensity = columns[intensity_name].astype(np.float32)
    else:
        intensity = np.zeros(n, dtype=np.float32)
        issue = (f"field {intensity_name!r} has count {columns[intensity_name].shape[1]}, expected 1"
                 if intensity_name is not None else
                 f"no intensity field ({' / '.join(intensity_names)}; fields: {', '.join(f[0] for f in parsed)})")
    return Cloud(xyz=xyz, intensity=intensity, valid=valid, columns=columns, height=height, width=width,
                 has_intensity=not issue, intensity_issue=issue)


def to_ros_cloud(header: Any, columns: dict[str, np.ndarray], *, height: int = 1, is_dense: bool | None = None):
    """An rclpy sensor_msgs/PointCloud2 from (N,) columns (little-endian, dict order, no padding).

    height > 1 builds an organised cloud of height x (N / height). is_dense defaults to "x, y, z all finite".
    """
    from sensor_msgs.msg import PointCloud2, PointField  # lazy: keeps this module importable without ROS

    fields, point_step, data = pack_cloud(columns)
    n = len(next(iter(columns.values())))
    if height < 1 or n % height:
        raise CloudError(f"cannot shape {n} points into {height} rows")
    if is_dense is None:
        xyz = [np.asarray(columns[c]) for c in "xyz" if c in columns]
        is_dense = all(bool(np.isfinite(c).all()) for c in xyz)
    msg = PointCloud2()
    msg.header = header
    msg.height = height
    msg.width = n // height
    msg.fields = [PointField(name=name, offset=offset, datatype=datatype, count=count)
                  for name, offset, datatype, count in fields]
    msg.is_bigendian = False
    msg.point_step = point_step
    msg.row_step = point_step * msg.width
    # array.array path: assigning numpy/memoryview to msg.data goes through a per-element setter (40 ms).
    payload = array.array("B")
    payload.frombytes(data)
    msg.data = payload
    msg.is_dense = is_dense
    return msg


def rgb_packed(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 colours -> (N,) float32 holding the packed 0x00RRGGBB uint32 bits (the PCL/RViz RGB8 field)."""
    rgb = np.asarray(rgb, dtype=np.uint32)
    return ((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]).astype(np.uint32).view(np.float32)
