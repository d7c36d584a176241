"""Fuzz: mutated PointCloud2 messages through the node's message callback with a tiny model; the node never
raises, counts no internal error, and still segments and publishes a good cloud afterwards.

2,000 mutants with AFI off (the cheap path: parsing, validation, voxelizer, network, publishing) and 200 with
streaming AFI on (degenerate clouds through AFI). More rounds: ``bench/bench_node.py --fuzz N``.
"""

import numpy as np
import pytest
from ros_test_utils import Harness, encode, make_tiny_model, to_rclpy

pytest.importorskip("rclpy")

from sensor_msgs.msg import PointCloud2  # noqa: E402

from ssov_ros.fuzz import mutate_cloud  # noqa: E402
from ssov_ros.pointcloud import read_cloud  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")



def _seeds(frame, rng):
    layouts = ["nuscenes", "xyzirc", "xyzircaedt", "pcl_xyzi", "xyz"]
    seeds = []
    for i, layout in enumerate(layouts):
        idx = rng.choice(len(frame.points), 96, replace=False)
        seeds.append(encode(layout, frame.points[idx], frame.intensity[idx], big_endian=i % 2 == 1,
                            height=2 if i == 2 else 1))
    return seeds


@pytest.mark.parametrize("afi, rounds", [(False, 2000), (True, 200)])
def test_node_survives_mutated_clouds_and_keeps_publishing(tiny_model, frame, afi, rounds):
    rng = np.random.default_rng(1234 + rounds)
    seeds = _seeds(frame, rng)
    h = Harness({"model.path": str(tiny_model), "model.threads": 1, "afi.enabled": afi, "temporal.history": 2,
                 "output.warn_throttle_s": 60.0})
    try:
        out = h.listen("/ssov_segmenter/output/points", PointCloud2)
        for i in range(rounds):
            msg, _ = mutate_cloud(seeds[i % len(seeds)], rng)
            h.node.on_cloud(msg)  # must not raise, whatever the bytes
        assert h.node.pipeline is not None  # the default: AFI and publishing on the worker thread
        assert h.node.wait_idle(60)  # every mutant published or dropped (superseded ones count as dropped)
        stats = h.node._stats
        assert stats["frames"] + stats["dropped"] == rounds
        # both paths were exercised: many mutants are still readable clouds, many are not
        assert stats["frames"] > rounds // 10 and stats["dropped"] > rounds // 10, stats
        assert stats["internal_errors"] == 0, stats["last_drop"]
        # alive: a good cloud still comes out segmented
        good = to_rclpy(encode("nuscenes", frame.points[:5000], frame.intensity[:5000]), stamp_ns=10**12)
        h.node.on_cloud(good)
        assert h.spin_until(lambda: out and out[-1].header.stamp.sec == 1000)
        labels = read_cloud(out[-1]).columns["label"]
        assert len(labels) == 5000 and labels.min() >= 1
        print(f"fuzz (AFI {afi}): {stats['frames']} segmented, {stats['dropped']} dropped")
    finally:
        h.close()
