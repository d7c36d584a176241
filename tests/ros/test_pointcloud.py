"""PointCloud2 reading/writing without ROS: every driver layout on the real sample, odd encodings, bad input."""

import numpy as np
import pytest
from ros_test_utils import LAYOUTS, encode

from ssov_ros.pointcloud import CloudError, pack_cloud, read_cloud, rgb_packed
from ssov_train.errors import DataError


@pytest.fixture(scope="module")
def sample(frame):
    return frame.points, frame.intensity


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_reads_back_the_real_sweep(sample, layout, big_endian):
    xyz, intensity = sample
    cloud = read_cloud(encode(layout, xyz, intensity, big_endian=big_endian))
    assert cloud.num_points == len(xyz) == 34688 and cloud.valid.all()
    np.testing.assert_allclose(cloud.xyz, xyz, rtol=0, atol=0)  # f4 and f8 both hold the f4 values exactly
    fields = dict((f[0], f[2]) for f in LAYOUTS[layout][0])
    if "intensity" in fields:
        assert cloud.has_intensity
        # integer layouts truncate the nuScenes float intensity (0..255) like a real uint8/uint16 driver would
        expected = intensity.astype(np.dtype(fields["intensity"])).astype(np.float32)
        np.testing.assert_array_equal(cloud.intensity, expected)
    else:
        assert not cloud.has_intensity and not cloud.intensity.any()
    assert set(cloud.columns) == set(fields)
    for name, fmt in fields.items():
        assert cloud.columns[name].dtype == np.dtype(fmt)  # native order, original type


def test_organised_cloud_with_row_padding_keeps_its_shape(sample):
    xyz, intensity = (a[:32 * 1000] for a in sample)
    msg = encode("xyzirc", xyz, intensity, height=32, row_padding=24)
    cloud = read_cloud(msg)
    assert (cloud.height, cloud.width) == (32, 1000)
    np.testing.assert_array_equal(cloud.xyz, xyz)  # padding bytes 0xab never leak into the points


def test_nan_and_inf_points_are_marked_invalid(sample):
    xyz = sample[0][:100].copy()
    xyz[3, 0], xyz[7, 2], xyz[9] = np.nan, np.inf, -np.inf
    cloud = read_cloud(encode("nuscenes", xyz, sample[1][:100]))
    assert np.flatnonzero(~cloud.valid).tolist() == [3, 7, 9]


def test_fields_selection_and_multi_count_fields():
    cols = {"x": np.arange(4, dtype=np.float32), "y": np.zeros(4, np.float32), "z": np.ones(4, np.float32),
            "ring": np.arange(4, dtype=np.uint16)}
    fields, step, data = pack_cloud(cols)
    assert fields == [("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("ring", 12, 4, 1)] and step == 14
    from types import SimpleNamespace as NS
    msg = NS(height=1, width=4, point_step=step, row_step=step * 4, is_bigendian=False, data=data,
             fields=[NS(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields])
    assert set(read_cloud(msg, fields=()).columns) == {"x", "y", "z"}
    # a count-2 field (e.g. a vendor's dual-return pair) comes back as (N, 2)
    msg.fields[3] = NS(name="pair", offset=12, datatype=2, count=2)
    np.testing.assert_array_equal(read_cloud(msg).columns["pair"], np.stack([np.arange(4), np.zeros(4)], 1))


def test_pack_then_read_round_trips_every_datatype():
    rng = np.random.default_rng(0)
    cols = {"x": rng.normal(size=50).astype(np.float32), "y": rng.normal(size=50), "z": rng.normal(size=50).astype("f4")}
    for dt in ("i1", "u1", "i2", "u2", "i4", "u4"):
        cols["c_" + dt] = rng.integers(0, 100, 50).astype(dt)
    cols["rgb"] = rgb_packed(rng.integers(0, 256, (50, 3)).astype(np.uint8))
    fields, step, data = pack_cloud(cols)
    from types import SimpleNamespace as NS
    msg = NS(height=1, width=50, point_step=step, row_step=step * 50, is_bigendian=False, data=data,
             fields=[NS(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields])
    back = read_cloud(msg).columns
    for name, col in cols.items():
        assert back[name].dtype == col.dtype
        np.testing.assert_array_equal(back[name].view(np.uint8), col.view(np.uint8))


def test_rgb_is_packed_for_rviz_rgb8():
    packed = rgb_packed(np.array([[255, 120, 50], [0, 0, 0]], np.uint8)).view(np.uint32)
    assert [(int(v) >> 16) & 255 for v in packed] == [255, 0] and (int(packed[0]) >> 8) & 255 == 120
    assert int(packed[0]) & 255 == 50


def test_reads_rosbags_and_rclpy_messages(sample):
    from rosbags.typesys import Stores, get_typestore

    from ros_test_utils import to_rclpy

    ns = encode("xyzircaedt", sample[0][:500], sample[1][:500])
    ts = get_typestore(Stores.ROS2_KILTED)
    T = ts.types
    header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=1, nanosec=0), frame_id="lidar")
    rb = T["sensor_msgs/msg/PointCloud2"](
        header=header, height=1, width=500, is_bigendian=False, point_step=ns.point_step, row_step=ns.row_step,
        fields=[T["sensor_msgs/msg/PointField"](name=f.name, offset=f.offset, datatype=f.datatype, count=1)
                for f in ns.fields], data=np.frombuffer(ns.data, np.uint8), is_dense=True)
    # through CDR and back, as read from a bag
    rb = ts.deserialize_cdr(ts.serialize_cdr(rb, "sensor_msgs/msg/PointCloud2"), "sensor_msgs/msg/PointCloud2")
    for msg in (rb, to_rclpy(ns)):
        cloud = read_cloud(msg)
        np.testing.assert_array_equal(cloud.xyz, sample[0][:500])
        assert cloud.columns["time_stamp"].dtype == np.uint32


def _bad(msg, **changes):
    for k, v in changes.items():
        setattr(msg, k, v)
    return msg


@pytest.mark.parametrize("change, reason", [
    (dict(width=0), "empty cloud"),
    (dict(data=b""), "data length 0 does not match"),
    (dict(row_step=10), "row_step 10 <"),
    (dict(point_step=0), "point_step is 0"),
    (dict(point_step=8, row_step=80), "does not fit in point_step 8"),
])
def test_bad_messages_raise_one_clear_error(sample, change, reason):
    msg = _bad(encode("nuscenes", sample[0][:10], sample[1][:10]), **change)
    with pytest.raises(CloudError, match=reason):
        read_cloud(msg)


def test_missing_xyz_unknown_datatype_and_duplicates(sample):
    msg = encode("nuscenes", sample[0][:10], sample[1][:10])
    msg.fields[2].name = "elevation"
    with pytest.raises(CloudError, match="no z field"):
        read_cloud(msg)
    msg.fields[2].name = "x"
    with pytest.raises(CloudError, match="field 'x' twice"):
        read_cloud(msg)
    msg.fields[2].name, msg.fields[2].datatype = "z", 9
    with pytest.raises(CloudError, match="unknown datatype 9"):
        read_cloud(msg)
    assert issubclass(CloudError, DataError)
    with pytest.raises(CloudError, match="not a PointCloud2"):
        read_cloud(object())


def test_pack_cloud_rejects_bad_columns():
    with pytest.raises(CloudError, match="different lengths"):
        pack_cloud({"x": np.zeros(3, np.float32), "y": np.zeros(4, np.float32)})
    with pytest.raises(CloudError, match="not a PointField datatype"):
        pack_cloud({"x": np.zeros(3, np.int64)})


@pytest.mark.parametrize("big_endian", [False, True])
def test_multi_count_fields_of_multi_byte_elements(big_endian):
    """A vendor layout written byte for byte with struct: x, y, z float32, 'ranges' 2 x float32 at 12,
    'rings' 2 x uint16 at 20, 'stamp' float64 at 24 (point_step 32)."""
    import struct
    from types import SimpleNamespace as NS

    order = ">" if big_endian else "<"
    points = [((1.5, -2.0, 0.25), (10.5, 11.25), (3, 65535), 1e9 + 0.5),
              ((-7.0, 3.5, 1.0), (300.0, -0.125), (258, 1), -2.5),
              ((0.0, 0.0, -1.75), (1e-3, 6.0e4), (4096, 17), 0.0)]
    data = b"".join(struct.pack(order + "3f2f2Hd", *xyz, *ranges, *rings, stamp) for xyz, ranges, rings, stamp in points)
    assert len(data) == 3 * 32
    msg = NS(height=1, width=3, point_step=32, row_step=96, is_bigendian=big_endian, data=data,
             fields=[NS(name=n, offset=o, datatype=d, count=c) for n, o, d, c in
                     [("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("ranges", 12, 7, 2), ("rings", 20, 4, 2),
                      ("stamp", 24, 8, 1)]])
    cloud = read_cloud(msg)
    np.testing.assert_array_equal(cloud.xyz, np.array([p[0] for p in points], np.float32))
    assert cloud.columns["ranges"].shape == (3, 2) and cloud.columns["ranges"].dtype == np.float32
    np.testing.assert_array_equal(cloud.columns["ranges"], np.array([p[1] for p in points], np.float32))
    assert cloud.columns["rings"].dtype == np.uint16
    assert cloud.columns["rings"].tolist() == [[3, 65535], [258, 1], [4096, 17]]
    assert cloud.columns["stamp"].tolist() == [1e9 + 0.5, -2.5, 0.0]
    assert not cloud.has_intensity and (cloud.intensity == 0).all()
