"""SemanticKITTI reader on a tiny sequence layout written in tmp_path."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from PIL import Image

from ssov_train.data.semantickitti import SemanticKittiReader
from ssov_train.errors import ConfigError, DataError
from ssov_train.vocab.dictionary import load_dictionary

# Calibration of KITTI odometry sequence 00 (calib.txt as distributed).
KITTI_CALIB = """\
P0: 7.188560000000e+02 0.000000000000e+00 6.071928000000e+02 0.000000000000e+00 0.000000000000e+00 7.188560000000e+02 1.852157000000e+02 0.000000000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 0.000000000000e+00
P1: 7.188560000000e+02 0.000000000000e+00 6.071928000000e+02 -3.861448000000e+02 0.000000000000e+00 7.188560000000e+02 1.852157000000e+02 0.000000000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 0.000000000000e+00
P2: 7.188560000000e+02 0.000000000000e+00 6.071928000000e+02 4.538225000000e+01 0.000000000000e+00 7.188560000000e+02 1.852157000000e+02 -1.130887000000e-01 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 3.779761000000e-03
P3: 7.188560000000e+02 0.000000000000e+00 6.071928000000e+02 -3.372877000000e+02 0.000000000000e+00 7.188560000000e+02 1.852157000000e+02 2.369057000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 4.915215000000e-03
Tr: 4.276802385584e-04 -9.999672484946e-01 -8.084491683471e-03 -1.198459927713e-02 -7.210626507497e-03 8.081198471645e-03 -9.999413164504e-01 -5.403984729748e-02 9.999738645903e-01 4.859485810390e-04 -7.206933692422e-03 -2.921968648686e-01
"""
# A calibration with round numbers: Tr only permutes axes (cam x = -lidar y, cam y = -lidar z,
# cam z = lidar x); camera 2 sits 0.06 m along cam0's +x, so P2[0, 3] = fx * 0.06 = 42.
SIMPLE_CALIB = """\
P0: 700 0 600 0 0 700 180 0 0 0 1 0
P1: 700 0 600 -378 0 700 180 0 0 0 1 0
P2: 700 0 600 42 0 700 180 0 0 0 1 0
P3: 700 0 600 -336 0 700 180 0 0 0 1 0
Tr: 0 -1 0 0 0 0 -1 0 1 0 0 0
"""
IMAGE_SIZE = (1241, 376)

# Raw ids with instance ids in the upper 16 bits, and their evaluation classes.
RAW = np.array([252, 60, 52, 10, 40, 0, 99, 254], dtype=np.uint32)
INSTANCE = np.array([7, 0, 0, 3, 0, 0, 0, 65535], dtype=np.uint32)
EVAL_NAMES = ["car", "road", "ignore", "car", "road", "ignore", "ignore", "person"]


def write_scan(root: Path, seq: str, scan: int, points: np.ndarray, labels: Optional[np.ndarray] = None,
               image: bool = False) -> None:
    d = root / "sequences" / seq
    (d / "velodyne").mkdir(parents=True, exist_ok=True)
    points.astype(np.float32).tofile(d / "velodyne" / f"{scan:06d}.bin")
    if labels is not None:
        (d / "labels").mkdir(exist_ok=True)
        labels.astype(np.uint32).tofile(d / "labels" / f"{scan:06d}.label")
    if image:
        (d / "image_2").mkdir(exist_ok=True)
        Image.new("RGB", IMAGE_SIZE).save(d / "image_2" / f"{scan:06d}.png")


def _points(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.c_[rng.uniform(-20, 20, size=(n, 3)), rng.uniform(0, 1, size=n)].astype(np.float32)


@pytest.fixture
def kitti(tmp_path) -> Path:
    """Sequences 00 (train: labels, calib, no images), 08 (val: images, calib, poses), 11 (test: no labels)."""
    packed = RAW | (INSTANCE << 16)
    for scan in range(3):
        write_scan(tmp_path, "00", scan, _points(len(RAW), scan), packed)
    (tmp_path / "sequences" / "00" / "calib.txt").write_text(KITTI_CALIB)
    for scan in range(2):
        write_scan(tmp_path, "08", scan, _points(len(RAW), 10 + scan), packed, image=True)
    (tmp_path / "sequences" / "08" / "calib.txt").write_text(KITTI_CALIB)
    # cam0 moves 5 m forward (+z) between the two scans.
    (tmp_path / "sequences" / "08" / "poses.txt").write_text("1 0 0 0 0 1 0 0 0 0 1 0\n1 0 0 0 0 1 0 0 0 0 1 5\n")
    write_scan(tmp_path, "11", 0, _points(5, 20))
    return tmp_path


def test_splits_only_list_sequences_on_disk(kitti):
    reader = SemanticKittiReader(kitti)
    assert reader.split_tokens("train") == ["00/000000", "00/000001", "00/000002"]
    assert reader.split_tokens("val") == ["08/000000", "08/000001"]
    assert reader.split_tokens("test") == ["11/000000"]
    with pytest.raises(ConfigError, match=r"unknown SemanticKITTI split 'trainval'.*\['test', 'train', 'val'\]"):
        reader.split_tokens("trainval")


def test_points_intensity_and_label_mapping(kitti):
    reader = SemanticKittiReader(kitti)
    assert reader.dictionary.name == "semantickitti"
    frame = reader.load("00/000001")
    pts = _points(len(RAW), 1)
    assert (frame.token, frame.dataset, frame.scene) == ("00/000001", "semantickitti", "00")
    np.testing.assert_array_equal(frame.points, pts[:, :3])
    np.testing.assert_array_equal(frame.intensity, pts[:, 3])  # remission as stored, no +1 here
    assert frame.points.dtype == frame.intensity.dtype == np.float32
    np.testing.assert_array_equal(frame.raw_labels, RAW)  # instance bits stripped
    names = load_dictionary("semantickitti").class_names
    assert [names[i] for i in frame.labels] == EVAL_NAMES
    assert frame.labels.dtype == np.uint8
    assert frame.cameras == []  # sequence 00 has no image_2/


def test_unlabelled_scan(kitti):
    frame = SemanticKittiReader(kitti).load("11/000000")
    assert frame.raw_labels is None and frame.labels is None and frame.cameras == []
    assert frame.lidar_to_ego is None and frame.ego_to_global is None


def test_camera_projection_matches_the_kitti_formula(kitti):
    frame = SemanticKittiReader(kitti).load("08/000001")
    [cam] = frame.cameras
    assert (cam.name, cam.token, (cam.width, cam.height)) == ("CAM2", "08_000001_image_2", IMAGE_SIZE)
    assert cam.image_path == kitti / "sequences" / "08" / "image_2" / "000001.png"
    assert cam.load_image().shape == (IMAGE_SIZE[1], IMAGE_SIZE[0], 3)

    # A point 10 m in front of the car, worked by hand from the calib above:
    #   cam0 = Tr @ (10, 0, 0, 1) = (-0.0077078, -0.1261461, 9.7075418)
    #   t2 = K^-1 P2[:, 3] = (0.0599386, -0.0011312, 0.0037798)  ->  cam2 = (0.0522308, -0.1272773, 9.7113215)
    #   u = 718.856 * 0.0522308 / 9.7113215 + 607.1928 = 611.0591
    #   v = 718.856 * -0.1272773 / 9.7113215 + 185.2157 = 175.7943
    p = np.array([10.0, 0.0, 0.0, 1.0])
    cam_p = cam.lidar_to_camera @ p
    uvw = cam.intrinsics @ cam_p[:3]
    np.testing.assert_allclose(cam_p[:3], [0.0522308, -0.1272773, 9.7113215], atol=1e-6)
    np.testing.assert_allclose(uvw[:2] / uvw[2], [611.0591, 175.7943], atol=1e-3)

    # Any point: K (T p) is the devkit's P2 @ Tr @ p.
    calib = {line.split(":")[0]: np.array(line.split()[1:], float).reshape(3, 4)
             for line in KITTI_CALIB.splitlines()}
    tr = np.vstack([calib["Tr"], [0, 0, 0, 1]])
    pts = np.c_[frame.points, np.ones(frame.num_points)]
    ours = (cam.intrinsics @ (cam.lidar_to_camera @ pts.T)[:3]).T
    devkit = (calib["P2"] @ tr @ pts.T).T
    np.testing.assert_allclose(ours, devkit, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(cam.lidar_to_camera[3], [0, 0, 0, 1])


def test_point_in_front_lands_on_its_pixel_through_the_projection_code(kitti):
    from ssov_train.geometry.projection import project_points

    # In front (the hand-worked point above), behind the car, and far off to the left.
    write_scan(kitti, "09", 0, np.array([[10, 0, 0, 0], [-10, 0, 0, 0], [10, 30, 0, 0]]), image=True)
    (kitti / "sequences" / "09" / "calib.txt").write_text(KITTI_CALIB)
    frame = SemanticKittiReader(kitti).load("09/000000")
    cam = frame.camera("CAM2")
    proj = project_points(frame.points, cam.lidar_to_camera, cam.intrinsics, cam.width, cam.height)
    assert proj.point_index.tolist() == [0]
    assert proj.pixel_rc.tolist() == [[175, 611]]
    np.testing.assert_allclose(proj.depth, [9.7113215], atol=1e-5)


def test_camera_projection_round_numbers(tmp_path):
    write_scan(tmp_path, "08", 0, np.array([[10, 0, 0, 0.5], [20, -2, 1, 0.1]]), image=True)
    (tmp_path / "sequences" / "08" / "calib.txt").write_text(SIMPLE_CALIB)
    cam = SemanticKittiReader(tmp_path).load("08/000000").camera("CAM2")
    np.testing.assert_allclose(cam.intrinsics, [[700, 0, 600], [0, 700, 180], [0, 0, 1]])
    uvw = cam.intrinsics @ (cam.lidar_to_camera[:3, :3] @ np.array([[10, 0, 0], [20, -2, 1]]).T
                            + cam.lidar_to_camera[:3, 3:])
    # (10, 0, 0): cam2 = (0.06, 0, 10)  -> u = 700 * 0.06 / 10 + 600 = 604.2, v = 180
    # (20, -2, 1): cam2 = (2.06, -1, 20) -> u = 700 * 2.06 / 20 + 600 = 672.1, v = -700 / 20 + 180 = 145
    np.testing.assert_allclose((uvw[:2] / uvw[2]).T, [[604.2, 180.0], [672.1, 145.0]], atol=1e-9)


def test_with_camera_false_and_missing_calib_give_no_camera(kitti):
    assert SemanticKittiReader(kitti, with_camera=False).load("08/000000").cameras == []
    (kitti / "sequences" / "08" / "calib.txt").unlink()
    frame = SemanticKittiReader(kitti).load("08/000000")
    assert frame.cameras == [] and frame.ego_to_global is None  # poses need Tr too


def test_poses_give_the_lidar_pose(kitti):
    reader = SemanticKittiReader(kitti)
    f0, f1 = reader.load("08/000000"), reader.load("08/000001")
    np.testing.assert_allclose(f0.ego_to_global, np.eye(4), atol=1e-9)
    np.testing.assert_allclose(f1.lidar_to_ego, np.eye(4))
    # cam0 moved 5 m along its z (forward): the lidar origin lands ~5 m along the first scan's lidar x.
    origin = f1.ego_to_global @ np.array([0, 0, 0, 1.0])
    np.testing.assert_allclose(origin[:3], [5, 0, 0], atol=0.05)
    np.testing.assert_allclose(f1.ego_to_global[:3, :3], np.eye(3), atol=1e-6)


def test_custom_dictionary_is_used(kitti):
    d = load_dictionary("semantickitti")
    d.raw_to_eval_map[52] = d.eval_index("building")
    frame = SemanticKittiReader(kitti, dictionary=d).load("00/000000")
    assert frame.labels[2] == d.eval_index("building")


def test_bin_size_must_be_a_multiple_of_16(kitti):
    path = kitti / "sequences" / "00" / "velodyne" / "000000.bin"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(DataError, match=r"000000\.bin: size 124 bytes is not a multiple of 16"):
        SemanticKittiReader(kitti).load("00/000000")


def test_label_count_must_match_points(kitti):
    path = kitti / "sequences" / "00" / "labels" / "000002.label"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(DataError, match=r"000002\.label: 28 bytes = 7 labels, but the scan has 8 points"):
        SemanticKittiReader(kitti).load("00/000002")


def test_missing_calib_key(kitti):
    calib = kitti / "sequences" / "08" / "calib.txt"
    calib.write_text("".join(line + "\n" for line in KITTI_CALIB.splitlines() if not line.startswith("P2")))
    with pytest.raises(DataError, match=r"08/calib\.txt: missing key 'P2'"):
        SemanticKittiReader(kitti).load("08/000000")
    assert SemanticKittiReader(kitti, with_camera=False).load("08/000000").ego_to_global is not None


def test_malformed_calib_line(kitti):
    (kitti / "sequences" / "08" / "calib.txt").write_text(KITTI_CALIB + "Tr_imu: 1 2 3\n")
    with pytest.raises(DataError, match=r"calib\.txt:6: expected '<key>: <12 numbers>'"):
        SemanticKittiReader(kitti).load("08/000000")


def test_bad_tokens_and_missing_scans(kitti):
    reader = SemanticKittiReader(kitti)
    with pytest.raises(DataError, match="invalid SemanticKITTI token"):
        reader.load("08-000000")
    with pytest.raises(DataError, match=r"scan missing: .*08/velodyne/000009\.bin"):
        reader.load("08/000009")
    with pytest.raises(DataError, match="no sequences/ directory"):
        SemanticKittiReader(kitti / "sequences")


def test_pose_missing_for_scan(kitti):
    (kitti / "sequences" / "08" / "poses.txt").write_text("1 0 0 0 0 1 0 0 0 0 1 0\n")
    with pytest.raises(DataError, match=r"poses\.txt: no pose for scan 1"):
        SemanticKittiReader(kitti).load("08/000001")
