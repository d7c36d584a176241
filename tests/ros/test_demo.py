"""The node demo end to end, shortened: the real-sample bag through the node (a tiny model), recorded, drawn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from ros_test_utils import DOMAIN_ID, make_tiny_model

pytest.importorskip("rclpy")

from ssov_ros.bags import CAMERAS, bag_info, calibration_params, deserialize, read_messages  # noqa: E402
from ssov_ros.pointcloud import read_cloud  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def test_demo_on_the_real_sample(tmp_path):
    model = make_tiny_model(tmp_path / "tiny.pt")
    out = tmp_path / "demo_out"
    env = {**os.environ, "ROS_DOMAIN_ID": str(DOMAIN_ID)}
    proc = subprocess.run([sys.executable, "-m", "ssov_ros.demo", "--out", str(out), "--bags", "nuscenes_sample",
                           "--model", str(model), "--min-sweeps", "1", "--rate", "1"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=600)  # a hang guard
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = out / "nuscenes_sample"
    summary = json.loads((out / "latency.json").read_text())["bags"]["nuscenes_sample"]
    assert summary["sweeps_published"] == 1 and summary["clouds_labelled"] == 1
    latency = summary["latency_ms"]
    assert {"total", "network", "end_to_end"} <= set(latency)
    # end to end (until the labelled cloud arrives) includes the network; the overlays come after the cloud
    assert latency["end_to_end"]["p50"] >= latency["network"]["p50"] > 0
    assert "end_to_end" in proc.stdout and "p50 ms" in proc.stdout
    # the recorded output: labelled clouds of the sweep, the legend and six overlays
    info = bag_info(run / "output_bag")
    assert info.topics["/ssov_segmenter/output/points"].count >= 2  # warm-up + measured
    for _, msgtype, _, raw in read_messages(run / "output_bag", ["/ssov_segmenter/output/points"]):
        cloud = read_cloud(deserialize(raw, msgtype), fields=("label", "score", "rgb"))
        assert cloud.num_points == 34688 and cloud.columns["label"].max() <= 16
    for cam in CAMERAS:
        overlay = cv2.imread(str(run / f"overlay_{cam}.png"))
        assert overlay.shape[0] > 900 and overlay.shape[1:] == (1600, 3)  # the image, then the legend below it
        legend, overlay = overlay[900:], overlay[:900]
        assert (legend < 128).any(axis=2).mean() > 0.01  # the legend's text and swatches
        image = next(deserialize(raw, t) for _, t, _, raw in read_messages(REPO / "rosbags" / "nuscenes_sample",
                                                                            [f"/{cam.lower()}/image_raw/compressed"]))
        original = cv2.imdecode(np.frombuffer(bytes(image.data), np.uint8), cv2.IMREAD_COLOR)
        changed = (np.abs(overlay.astype(int) - original.astype(int)).sum(2) > 60).mean()
        assert 0.002 < changed < 0.3, cam  # points drawn on the camera image, the image still there
    bev = cv2.imread(str(run / "bev.png"))
    assert bev is not None and bev.shape[0] > 500


def _voxel_iou(a: np.ndarray, b: np.ndarray, size: float = 0.5) -> float:
    va, vb = ({tuple(v) for v in np.floor(p / size).astype(int)} for p in (a, b))
    return len(va & vb) / len(va | vb)


def test_street_map_registers_sweeps_by_odometry():
    """Two sweeps 1 s (5-10 m of driving) apart, placed by the bag's odometry, overlap on the static street."""
    from ssov_ros.demo import place_clouds

    bag = REPO / "rosbags" / "synthetic_street"
    sweeps = [(stamp, read_cloud(deserialize(raw, t)).xyz, None)
              for _, t, stamp, raw in read_messages(bag, ["/lidar_top/points"])]
    lidar_to_base = calibration_params(bag)["temporal.sensor_to_base"]
    (i, first, _), (j, later, pose) = place_clouds(bag, [sweeps[5], sweeps[15]], lidar_to_base)[0]
    assert (i, j) == (0, 1) and np.linalg.norm(pose[:2, 3]) > 4.0
    # what stands above the road (walls, poles, trees; lidar 1.84 m up): the ground looks alike from anywhere
    high = [sweeps[k][1][:, 2] > -0.5 for k in (5, 15)]
    placed = _voxel_iou(first[high[0]], later[high[1]])
    unplaced = _voxel_iou(sweeps[5][1][high[0]], sweeps[15][1][high[1]])
    assert placed > 2 * unplaced, (placed, unplaced)
    print(f"occupied 0.5 m voxels shared by the two sweeps: {placed:.2f} placed, {unplaced:.2f} in the sensor frame")
