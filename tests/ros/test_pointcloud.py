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
    with pytest.raises(CloudError, match=r"^field .z. has unknown datatype 9 \(PointField datatypes are 1..8\)$"):
        read_cloud(msg)
    assert issubclass(CloudError, DataError)
    with pytest.raises(CloudError, match="not a PointCloud2"):
        read_cloud(object())


def test_pack_cloud_rejects_bad_columns():
    with pytest.raises(CloudError, match=r"^pack_cloud: columns have different lengths \{.x.: \(3,\), .y.: \(4,\)\}$"):
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


def test_to_ros_cloud_builds_the_message_by_hand():
    """sensor_msgs/PointCloud2 fields as its definition gives them: little-endian, no padding, row_step =
    point_step * width, is_dense = no point with a non-finite x, y or z."""
    from std_msgs.msg import Header

    from ssov_ros.pointcloud import to_ros_cloud

    header = Header(frame_id="lidar")
    cols = {"x": np.array([1, 2, 3, 4], np.float32), "y": np.array([0, 0, 0, np.nan], np.float32),
            "z": np.zeros(4, np.float32), "label": np.array([7, 0, 1, 256], np.uint16)}
    msg = to_ros_cloud(header, cols)
    assert msg.header.frame_id == "lidar" and (msg.height, msg.width) == (1, 4)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("label", 12, 4, 1)]
    assert msg.is_bigendian is False and msg.point_step == 14 and msg.row_step == 56
    assert len(msg.data) == 56
    assert bytes(msg.data[14:28]).hex() == "00000040" "00000000" "00000000" "0000"  # point 1: 2.0, 0, 0, label 0
    assert bytes(msg.data[42:56]).hex()[-4:] == "0001"  # label 256, little-endian
    assert msg.is_dense is False  # the NaN y of point 3
    cols["y"][3] = 0
    organised = to_ros_cloud(header, cols, height=2)
    assert (organised.height, organised.width, organised.row_step) == (2, 2, 28) and organised.is_dense is True
    assert type(organised.width) is int and type(organised.row_step) is int  # uint32 fields
    assert to_ros_cloud(header, cols, is_dense=False).is_dense is False
    assert to_ros_cloud(header, {"intensity": np.array([np.nan], np.float32)}).is_dense is True  # no x, y, z
    # only x, y and z count: a NaN in another column (even one called "X") leaves the cloud dense
    assert to_ros_cloud(header, {**cols, "X": np.full(4, np.nan, np.float32)}).is_dense is True
    for bad in (3, 0):
        with pytest.raises(CloudError, match=f"cannot shape 4 points into {bad} rows"):
            to_ros_cloud(header, cols, height=bad)


def _xyz_msg(points, **changes):
    """A hand-written x, y, z float32 cloud (point_step 12), attributes overridable."""
    from types import SimpleNamespace as NS

    data = np.asarray(points, "<f4").tobytes()
    msg = NS(height=1, width=len(points), point_step=12, row_step=12 * len(points), is_bigendian=False, data=data,
             fields=[NS(name=n, offset=4 * i, datatype=7, count=1) for i, n in enumerate("xyz")])
    for k, v in changes.items():
        setattr(msg, k, v)
    return msg


def test_message_data_in_every_container_reads_the_same():
    """msg.data as rclpy (array.array), rosbags (uint8 ndarray), bytes, a list of ints; a uint8 ndarray is read
    in place, without a copy (one scan is a megabyte)."""
    import array

    from ssov_ros.pointcloud import _data_as_uint8

    points = [[1.5, -2, 3], [0, 0.25, -8]]
    raw = np.asarray(points, "<f4").tobytes()
    as_numpy = np.frombuffer(raw, np.uint8).copy()
    for data in (array.array("B", raw), as_numpy, as_numpy.reshape(4, 6), raw, list(raw), memoryview(raw),
                 np.frombuffer(raw, "<u2").copy()):
        np.testing.assert_array_equal(read_cloud(_xyz_msg(points, data=data)).xyz, np.float32(points))
    assert np.shares_memory(_data_as_uint8(as_numpy), as_numpy)
    assert _data_as_uint8(list(raw)).tolist() == list(raw)
    with pytest.raises(CloudError, match=r"^cloud data is not a byte buffer \(list\)$"):
        read_cloud(_xyz_msg(points, data=["a"] * 24))


def test_header_values_are_checked_with_their_numbers():
    points = [[1, 2, 3], [4, 5, 6]]
    with pytest.raises(CloudError, match=r"^empty cloud \(height -2, width 3\)$"):
        read_cloud(_xyz_msg(points, height=-2, width=3))
    with pytest.raises(CloudError, match=r"^empty cloud \(height 2, width -1\)$"):
        read_cloud(_xyz_msg(points, height=2, width=-1))
    with pytest.raises(CloudError, match=r"^empty cloud \(height 0, width 2\)$"):
        read_cloud(_xyz_msg(points, height=0))
    # point_step 1 is a legal header value: the fields then do not fit
    with pytest.raises(CloudError, match=r"^field 'x' \(offset 0, 1 x float32\) does not fit in point_step 1$"):
        read_cloud(_xyz_msg(points, point_step=1, row_step=2))
    with pytest.raises(CloudError, match=r"^point_step is -12$"):
        read_cloud(_xyz_msg(points, point_step=-12))
    with pytest.raises(CloudError, match=r"^row_step 23 < width 2 x point_step 12$"):
        read_cloud(_xyz_msg(points, row_step=23))
    with pytest.raises(CloudError, match=r"^data length 24 does not match row_step 28 x height 1$"):
        read_cloud(_xyz_msg(points, row_step=28))
    for missing in ("height", "data", "is_bigendian"):
        msg = _xyz_msg(points)
        delattr(msg, missing)
        with pytest.raises(CloudError, match=rf"not a PointCloud2 message \(.*{missing}"):
            read_cloud(msg)


def test_field_table_is_checked_field_by_field():
    from types import SimpleNamespace as NS

    from ssov_ros.pointcloud import parse_fields

    points = [[1, 2, 3], [4, 5, 6]]
    msg = _xyz_msg(points)
    msg.fields[1].name, msg.fields[2].name = "elevation", "azimuth"
    with pytest.raises(CloudError, match=r"^cloud has no y, z field \(fields: \['azimuth', 'elevation', 'x'\]\)$"):
        read_cloud(msg)
    msg = _xyz_msg(points)
    msg.fields.insert(0, NS(name="", offset=0, datatype=7, count=1))
    with pytest.raises(CloudError, match=r"^cloud has a field with an empty name$"):
        read_cloud(msg)
    with pytest.raises(CloudError, match=r"not a PointCloud2 message \(.*fields"):
        parse_fields(NS(point_step=12))
    # a count-0 padding field holds no data and is skipped; the fields after it are still read
    msg = _xyz_msg(points)
    msg.fields.insert(0, NS(name="pad", offset=0, datatype=2, count=0))
    assert [f[0] for f in parse_fields(msg)] == ["x", "y", "z"]
    np.testing.assert_array_equal(read_cloud(msg).xyz, np.float32(points))
    # 2 x float32 at offset 8 ends at 16 > point_step 12; a negative offset starts before the point
    msg = _xyz_msg(points)
    msg.fields[2] = NS(name="z", offset=8, datatype=7, count=2)
    with pytest.raises(CloudError, match=r"^field 'z' \(offset 8, 2 x float32\) does not fit in point_step 12$"):
        read_cloud(msg)
    msg.fields[2] = NS(name="z", offset=-4, datatype=7, count=1)
    with pytest.raises(CloudError, match=r"^field 'z' \(offset -4, 1 x float32\) does not fit in point_step 12$"):
        read_cloud(msg)
    msg.fields[2] = NS(name="z", offset=8, datatype=7, count=1)  # ends exactly at point_step: fine
    assert parse_fields(msg)[2] == ("z", 8, 7, 1)


def test_pack_cloud_error_messages():
    with pytest.raises(CloudError, match=r"^pack_cloud: no columns given$"):
        pack_cloud({})
    with pytest.raises(CloudError, match=r"^pack_cloud: column 'x' has shape \(2, 3\), expected \(N,\)$"):
        pack_cloud({"x": np.zeros((2, 3), np.float32)})


def test_field_selection_skips_unwanted_fields_wherever_they_are():
    """t (float64 at 0) is not asked for and comes first; x, y, z, intensity and ring after it are read."""
    import struct
    from types import SimpleNamespace as NS

    data = b"".join(struct.pack("<d3ffH", 0.5 * i, i, -i, 2 * i, 10 * i, 7 + i) for i in range(3))
    msg = NS(height=1, width=3, point_step=26, row_step=78, is_bigendian=False, data=data,
             fields=[NS(name=n, offset=o, datatype=d, count=1) for n, o, d in
                     [("t", 0, 8), ("x", 8, 7), ("y", 12, 7), ("z", 16, 7), ("intensity", 20, 7), ("ring", 24, 4)]])
    cloud = read_cloud(msg, fields=("ring",))
    assert set(cloud.columns) == {"x", "y", "z", "intensity", "ring"}
    assert cloud.columns["ring"].tolist() == [7, 8, 9] and cloud.intensity.tolist() == [0, 10, 20]
    np.testing.assert_array_equal(cloud.xyz, np.float32([[0, 0, 0], [1, -1, 2], [2, -2, 4]]))


def test_a_coordinate_with_count_2_is_refused():
    from types import SimpleNamespace as NS

    msg = _xyz_msg([[1, 2, 3], [4, 5, 6]])
    msg.fields = [NS(name="x", offset=0, datatype=7, count=2), NS(name="z", offset=8, datatype=7, count=1),
                  NS(name="y", offset=4, datatype=7, count=1)]
    with pytest.raises(CloudError, match=r"^field 'x' has count 2, expected 1$"):
        read_cloud(msg)


def test_data_buffer_is_one_flat_byte_vector():
    from ssov_ros.pointcloud import _data_as_uint8

    grid = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert _data_as_uint8(grid).tolist() == list(range(12))
    assert _data_as_uint8([[1, 2], [3, 4]]).tolist() == [1, 2, 3, 4]
    assert _data_as_uint8(np.array([1, 258], "<u2")).tolist() == [1, 0, 2, 1]


def test_intensity_and_coordinates_come_as_float32_with_the_reason_when_missing():
    """Every layout gives float32 xyz / intensity (the model's input type); a cloud without a usable intensity
    gets zeros of its length and the reason, naming the names tried and the fields it has."""
    import warnings
    from types import SimpleNamespace as NS

    points = np.array([[1e300, 0, 0], [1, 2, 3]], "<f8")
    fields = [NS(name=n, offset=8 * i, datatype=8, count=1) for i, n in enumerate("xyz")]
    base = dict(height=1, width=2, is_bigendian=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a float64 beyond float32's range is an invalid point, not a warning
        no_intensity = read_cloud(NS(**base, point_step=24, row_step=48, data=points.tobytes(), fields=fields))
        assert no_intensity.xyz.dtype == np.float32 and no_intensity.valid.tolist() == [False, True]
        assert no_intensity.xyz[1].tolist() == [1, 2, 3]
        assert no_intensity.intensity.dtype == np.float32 and no_intensity.intensity.tolist() == [0, 0]
        assert not no_intensity.has_intensity
        assert no_intensity.intensity_issue == "no intensity field (intensity / i / reflectivity; fields: x, y, z)"

        data = np.concatenate([points, [[1e300], [7.5]]], 1).tobytes()
        with_f8 = read_cloud(NS(**base, point_step=32, row_step=64, data=data,
                                fields=fields + [NS(name="reflectivity", offset=24, datatype=8, count=1)]))
    assert with_f8.intensity.dtype == np.float32 and with_f8.intensity.tolist() == [np.inf, 7.5]
    assert with_f8.has_intensity and with_f8.intensity_issue == ""

    pairs = np.concatenate([points, [[1, 2], [3, 4]]], 1).tobytes()
    two = read_cloud(NS(**base, point_step=40, row_step=80, data=pairs,
                        fields=fields + [NS(name="intensity", offset=24, datatype=8, count=2)]))
    assert not two.has_intensity and two.intensity.tolist() == [0, 0]
    assert two.intensity_issue == "field 'intensity' has count 2, expected 1"
