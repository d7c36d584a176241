"""The bag layer without ROS: the shipped bags (real sample, synthetic street), reading, writing, errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from ssov_ros import bags
from ssov_ros.bags import (BagWriter, QosSpec, bag_info, calibration_params, deserialize, first_message,
                           read_messages, replay_schedule)
from ssov_ros.pointcloud import read_cloud
from ssov_ros.tf_buffer import xyz_quat_matrix
from ssov_train.errors import DataError

REPO = Path(__file__).resolve().parents[2]
SAMPLE_BAG, SYNTH_BAG = REPO / "rosbags" / "nuscenes_sample", REPO / "rosbags" / "synthetic_street"
SAMPLE_DIR = REPO / "data" / "nuscenes_sample"


def test_sample_bag_holds_the_real_keyframe_as_recorded():
    meta = json.loads((SAMPLE_DIR / "sample.json").read_text())
    info = bag_info(SAMPLE_BAG)
    assert info.topics["/lidar_top/points"].msgtype == "sensor_msgs/msg/PointCloud2"
    assert info.topics["/lidar_top/points"].qos == bags.SENSOR_QOS
    assert info.topics["/tf_static"].qos.durability == "transient_local"
    # the sweep: nuScenes' 5-field float32 layout, the .pcd.bin's bytes exactly
    stamp, cloud = first_message(SAMPLE_BAG, "/lidar_top/points")
    assert [(f.name, f.offset, f.datatype) for f in cloud.fields] == [
        ("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 12, 7), ("ring", 16, 7)]
    assert cloud.point_step == 20 and cloud.width == 34688 and cloud.header.frame_id == "lidar_top"
    assert bytes(cloud.data) == (SAMPLE_DIR / meta["lidar"]["file"]).read_bytes()
    assert stamp == round(meta["timestamp_s"] * 1e6) * 1000
    parsed = read_cloud(cloud)
    assert parsed.num_points == 34688 and parsed.has_intensity
    # six cameras: the JPEGs untouched, intrinsics, frames
    for cam, c in meta["cameras"].items():
        t_img, img = first_message(SAMPLE_BAG, bags.image_topic(cam))
        assert img.format == "jpeg" and bytes(img.data) == (SAMPLE_DIR / c["file"]).read_bytes()
        _, info_msg = first_message(SAMPLE_BAG, bags.camera_info_topic(cam))
        np.testing.assert_allclose(info_msg.k.reshape(3, 3), c["cam2img"])
        assert (info_msg.width, info_msg.height) == (1600, 900) and info_msg.header.frame_id == cam.lower()
        assert t_img == round(c["timestamp_s"] * 1e6) * 1000 < stamp  # cameras expose before the sweep
    _, tf_static = first_message(SAMPLE_BAG, "/tf_static")
    assert {t.child_frame_id for t in tf_static.transforms} == {"lidar_top", *(c.lower() for c in meta["cameras"])}


def test_calibration_from_the_bag_reproduces_the_full_nuscenes_chain():
    """lidar -> camera through /tf_static and the ego poses on /tf equals sample.json's lidar2cam (which carries
    the ego motion between sweep and exposure)."""
    meta = json.loads((SAMPLE_DIR / "sample.json").read_text())
    params = calibration_params(SAMPLE_BAG)
    assert params["cameras.names"] == list(bags.CAMERAS) and params["cameras.transport"] == "compressed"
    l2c = np.asarray(params["cameras.lidar_to_camera"]).reshape(-1, 7)
    for cam, row in zip(params["cameras.names"], l2c):
        np.testing.assert_allclose(xyz_quat_matrix(row), meta["cameras"][cam]["lidar2cam"], atol=1e-6)
    np.testing.assert_allclose(xyz_quat_matrix(params["temporal.sensor_to_base"]), meta["lidar"]["lidar2ego"],
                               atol=1e-6)


def test_synthetic_bag_is_a_10hz_sequence_with_odometry_and_small():
    info = bag_info(SYNTH_BAG)
    lidar = [(stamp, deserialize(raw, t)) for _, t, stamp, raw in read_messages(SYNTH_BAG, ["/lidar_top/points"])]
    assert len(lidar) >= 40 and info.topics["/odom"].count >= len(lidar)
    periods = np.diff([s for s, _ in lidar]) / 1e9
    np.testing.assert_allclose(periods, 0.1, atol=1e-6)
    for stamp, msg in lidar[::13]:
        assert [f.name for f in msg.fields] == ["x", "y", "z", "intensity", "ring"]
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == stamp
        cloud = read_cloud(msg, fields=("ring",))
        assert cloud.valid.all() and 10_000 < cloud.num_points <= 32 * 542
        assert set(np.unique(cloud.columns["ring"])) <= set(range(32))
    # the ego moves forward at street speed
    odom = [deserialize(raw, t) for _, t, _, raw in read_messages(SYNTH_BAG, ["/odom"])]
    speed = np.array([o.twist.twist.linear.x for o in odom])
    assert odom[0].header.frame_id == "odom" and odom[0].child_frame_id == "base_link"
    assert 4.0 < speed.min() and speed.max() < 11.0
    travelled = odom[-1].pose.pose.position.x - odom[0].pose.pose.position.x
    assert travelled == pytest.approx(speed.mean() * (len(odom) - 1) / 50.0, rel=0.05)
    sizes = sum(f.stat().st_size for d in (SAMPLE_BAG, SYNTH_BAG) for f in d.rglob("*") if f.is_file())
    assert sizes < 15e6


def _decoded(value):
    """A deserialized message as plain nested Python data (arrays as lists): fields compared by value, so the
    check does not depend on how a CDR serialiser or the zstd chunk compressor lays out bytes."""
    if isinstance(value, np.ndarray):
        return [value.dtype.str, value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_decoded(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {"__msgtype__": getattr(value, "__msgtype__", type(value).__name__),
                **{name: _decoded(getattr(value, name)) for name in value.__dataclass_fields__}}
    return value


def _assert_same(got, want, where: str) -> None:
    """Decoded values equal; floats to 1e-12 relative / 1e-9 absolute (the ego poses on /tf come out of matrix
    inversions, whose last bits vary with the BLAS build), every other value exactly."""
    if isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            _assert_same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert isinstance(got, float) and math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-9), (where, got, want)
    else:
        assert type(got) is type(want) and got == want, (where, got, want)


def _bag_content(path: Path) -> tuple:
    """Everything a reader of the bag sees, decoded: topics with type, count and QoS, the time span, the
    storage's connections (type, serialization format, recorded QoS) and every message's decoded fields."""
    from rosbags.rosbag2 import Reader

    info = bag_info(path)
    with Reader(path) as reader:
        connections = sorted((c.topic, c.msgtype, c.ext.serialization_format,
                              [QosSpec.from_rosbags([q]) for q in c.ext.offered_qos_profiles])
                             for c in reader.connections)
        storage = reader.message_count
    metadata = yaml.safe_load((path / "metadata.yaml").read_text())  # parsed: a YAML emitter's layout may change
    messages = [(topic, t_ns, _decoded(deserialize(raw, msgtype))) for topic, msgtype, t_ns, raw in read_messages(path)]
    return info.topics, (info.start_ns, info.end_ns, info.message_count), (storage, metadata), connections, messages


def test_sample_bag_generation_is_reproducible(tmp_path):
    """Regenerating the sample bag gives the shipped bag's content (decoded messages, QoS, metadata); the
    compressed bytes are the zstd binding's business and may change with its release."""
    out = bags.make_sample_bag(tmp_path / "nuscenes_sample")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in SAMPLE_BAG.iterdir())
    regenerated, shipped = _bag_content(out), _bag_content(SAMPLE_BAG)
    assert regenerated[:4] == shipped[:4]
    assert len(regenerated[4]) == len(shipped[4]) == 21
    for got, want in zip(regenerated[4], shipped[4]):
        _assert_same(got, want, f"{want[0]} at {want[1]}")
    assert not list(tmp_path.glob(".*"))  # no partial directory left behind


def test_bag_content_comparison_sees_a_changed_field(tmp_path):
    """The decoded comparison above is not blind: one intensity changed in the sweep makes the bags differ."""
    out = bags.make_sample_bag(tmp_path / "a")
    stamp, cloud = first_message(out, "/lidar_top/points")
    columns = read_cloud(cloud).columns
    cols = {name: np.array(columns[name], dtype=np.float32) for name in ("x", "y", "z", "intensity", "ring")}
    cols["intensity"][100] += 1.0
    changed = tmp_path / "b"
    with BagWriter(changed) as w:
        for topic, msgtype, t_ns, raw in read_messages(out):
            if topic not in w.counts:
                w.add_topic(topic, msgtype, bag_info(out).topics[topic].qos)
            if topic == "/lidar_top/points":
                raw = bags.serialize(bags.cloud_message(stamp, "lidar_top", cols))
            w.write(topic, t_ns, raw)
    original, edited = _bag_content(out), _bag_content(changed)
    assert original[:2] == edited[:2] and original[3] == edited[3]
    lidar_index = next(i for i, m in enumerate(original[4]) if m[0] == "/lidar_top/points")
    with pytest.raises(AssertionError, match="lidar_top"):
        _assert_same(edited[4][lidar_index], original[4][lidar_index], "/lidar_top/points")
    for i, (got, want) in enumerate(zip(edited[4], original[4])):
        if i != lidar_index:
            _assert_same(got, want, want[0])


def test_small_synthetic_bag(tmp_path):
    out = bags.make_synthetic_bag(tmp_path / "s", sweeps=3, cameras=False, azimuth_steps=100)
    info = bag_info(out)
    assert info.topics["/lidar_top/points"].count == 3 and "/cam_front/image_raw/compressed" not in info.topics
    assert info.duration_s == pytest.approx(0.2, abs=0.03)


def test_writer_round_trip_and_atomicity(tmp_path):
    path = tmp_path / "bag"
    msg = bags.cloud_message(5, "f", {"x": np.arange(3, dtype=np.float32), "y": np.zeros(3, np.float32),
                                     "z": np.ones(3, np.float32)})
    with BagWriter(path) as w:
        w.add_topic("/c", "sensor_msgs/msg/PointCloud2", QosSpec("best_effort", "volatile", 3))
        w.write_msg("/c", 7, msg)
        w.write_msg("/c", 9, msg)
    assert [(t, s) for t, _, s, _ in read_messages(path)] == [("/c", 7), ("/c", 9)]
    assert bag_info(path).topics["/c"].qos == QosSpec("best_effort", "volatile", 3)
    with pytest.raises(DataError, match="already exists"):
        BagWriter(path)
    with pytest.raises(RuntimeError):
        with BagWriter(tmp_path / "broken") as w:
            w.add_topic("/c", "sensor_msgs/msg/PointCloud2")
            w.write_msg("/c", 1, msg)
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"]  # nothing half-written
    with pytest.raises(DataError, match="unknown"):
        with BagWriter(tmp_path / "x") as w:
            w.add_topic("/c", "my_msgs/msg/Nope")


def test_broken_bags_give_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        bag_info(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no metadata.yaml"):
        bag_info(tmp_path / "empty")
    with pytest.raises(DataError, match="no topic /nope"):
        list(read_messages(SAMPLE_BAG, ["/nope"]))
    broken = tmp_path / "truncated"
    shutil.copytree(SAMPLE_BAG, broken)
    mcap = broken / "nuscenes_sample.mcap"
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    with pytest.raises(DataError, match=f"bag {broken}"):
        bag_info(broken)
        list(read_messages(broken))
    garbage = tmp_path / "garbage"
    shutil.copytree(SAMPLE_BAG, garbage)
    (garbage / "metadata.yaml").write_text("rosbag2_bagfile_information: [1, 2")
    with pytest.raises(DataError, match="cannot be read"):
        bag_info(garbage)


def test_replay_schedule_keeps_the_recorded_spacing_scaled_by_rate():
    msgs = [("/a", "t", 2_000_000_000, b""), ("/b", "t", 2_100_000_000, b""), ("/a", "t", 3_000_000_000, b"")]
    schedule = list(replay_schedule(iter(msgs), 2.0))
    np.testing.assert_allclose([due for due, _ in schedule], [0, 0.05, 0.5])
    assert [m for _, m in schedule] == msgs
    assert list(replay_schedule([], 1.0)) == []
    with pytest.raises(ValueError):
        list(replay_schedule(msgs, 0.0))
