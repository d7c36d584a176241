"""Real-data checks: the metrics on a hand-made keyframe (14 points, 4 boxes) with hand-computed values, then
`ssov-train realcheck` end to end on the shipped keyframe with the shipped model."""

import json
from pathlib import Path

import numpy as np
import pytest

from ssov_train.cli import main
from ssov_train.errors import ConfigError
from ssov_train.evaluation.realcheck import (CheckGeometry, ClassGroups, RealScan, box_accuracy, check_labels, goals,
                                             parse_model_argument, run_realcheck, share)
from ssov_train.geometry.boxes import points_in_boxes
from ssov_train.training.checkpoint import load_checkpoint
from ssov_train.vocab import load_dictionary

REPO = Path(__file__).resolve().parents[2]
SAMPLE_DIR = REPO / "data" / "nuscenes_sample"  # the shipped real keyframe


DICT = load_dictionary("nuscenes")
NAMES = DICT.class_names
CAR, TRUCK, BUS, PED, BARRIER, ROAD, SIDEWALK, TERRAIN, MANMADE, VEG = (DICT.eval_index(n) for n in (
    "car", "truck", "bus", "pedestrian", "barrier", "driveable_surface", "sidewalk", "terrain", "manmade", "vegetation"))
MODEL = REPO / "models" / "ssov_synthetic_minkunet34c_w025.pt"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# nuScenes-like mounting: lidar x (right) -> ego -y, lidar y (forward) -> ego x, sensor 0.94 m ahead of the ego
# origin and 1.84 m above the ground. A lidar point (x, y, z) is at ego (y + 0.94, -x, z + 1.84).
LIDAR_TO_EGO = [[0, 1, 0, 0.94], [-1, 0, 0, 0], [0, 0, 1, 1.84], [0, 0, 0, 1]]
BOXES = [  # lidar frame: x, y, z, dx, dy, dz, yaw
    ("car", [3, 10, -1.0, 4, 2, 1.6, np.pi / 2]),  # long axis along lidar y: |x - 3| <= 1, |y - 10| <= 2
    ("pedestrian", [-6, 2, -1.0, 0.8, 0.8, 1.8, 0]),
    ("ignore", [10, -10, -1.0, 2, 2, 2, 0]),  # a box of no evaluation class: not scored, but still "in a box"
    ("barrier", [0, -8, -1.6, 1, 1, 1, 0]),
]
# lidar xyz, label given, and what each point is (ego coordinates in brackets)
POINTS = [
    ((3, 11.5, -1.0), CAR),  # 0 car box (outside it if the yaw were ignored)
    ((3.5, 9, -0.5), TRUCK),  # 1 car box
    ((3, 8.5, -1.2), CAR),  # 2 car box
    ((-6, 2, -1.0), PED),  # 3 pedestrian box
    ((-6.2, 2.1, -0.5), MANMADE),  # 4 pedestrian box
    ((4.5, 10, -1.0), VEG),  # 5 beside the car box (inside it if the yaw were ignored); ego z 0.84: not low
    ((0, 5, -1.84), ROAD),  # 6 ego (5.94, 0, 0): low, ego lane
    ((1, -6, -1.80), SIDEWALK),  # 7 ego (-5.06, -1, 0.04): low, ego lane (behind)
    ((-1.5, 8, -1.7), ROAD),  # 8 ego (8.94, 1.5, 0.14): low, ego lane
    ((0.5, 9.5, -1.84), TERRAIN),  # 9 ego (10.44, -0.5, 0): low, beyond the lane's 10 m
    ((5, 0, -1.84), CAR),  # 10 ego (0.94, -5, 0): low, beside the lane
    ((0, 25, -1.84), ROAD),  # 11 ego (25.94, 0, 0): beyond 20 m
    ((10, -10, -1.0), BUS),  # 12 in the ignore box
    ((0.2, -8, -1.7), BARRIER),  # 13 barrier box; ego (-7.06, -0.2, 0.14): low and in the lane strip, but in a box
]
LABELS = np.array([label for _, label in POINTS])


@pytest.fixture(scope="module")
def tiny_keyframe(tmp_path_factory):
    """A single-sample folder in the shipped layout holding the 14 points and 4 boxes above."""
    root = tmp_path_factory.mktemp("tiny_keyframe")
    pts = np.array([(*xyz, 10.0 * i, 0) for i, (xyz, _) in enumerate(POINTS)], np.float32)
    pts.tofile(root / "sweep.pcd.bin")
    camera = {"sample_data_token": "cam", "width": 16, "height": 9, "cam2img": np.eye(3).tolist(),
              "lidar2cam": np.eye(4).tolist(), "file": "none.jpg", "timestamp_s": 0.0}
    meta = {"sample_token": "tiny", "timestamp_s": 0.0, "ego2global": np.eye(4).tolist(),
            "lidar": {"file": "sweep.pcd.bin", "num_pts_feats": 5, "lidar2ego": LIDAR_TO_EGO},
            "cameras": {name: dict(camera, sample_data_token=name) for name in
                        ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")},
            "boxes_3d": {"boxes": [{"bbox_3d": box, "class": cls} for cls, box in BOXES]}}
    (root / "sample.json").write_text(json.dumps(meta))
    return root


def test_scan_of_a_keyframe_folder(tiny_keyframe):
    scan = RealScan.from_sample(tiny_keyframe, DICT)
    assert scan.box_index.tolist() == [0, 0, 0, 1, 1, -1, -1, -1, -1, -1, -1, -1, 2, 3]
    assert scan.box_class.tolist() == [CAR] * 3 + [PED] * 2 + [0] * 8 + [BARRIER]
    assert scan.ego_xyz[6] == pytest.approx([5.94, 0, 0], abs=1e-6)
    assert scan.ego_xyz[7] == pytest.approx([-5.06, -1, 0.04], abs=1e-6)
    assert scan.intensity.tolist() == [10.0 * i for i in range(14)]


def test_checks_on_the_hand_made_keyframe(tiny_keyframe):
    scan = RealScan.from_sample(tiny_keyframe, DICT)
    m = check_labels(LABELS, scan, ClassGroups.from_dictionary(DICT), NAMES)
    boxes = m["box_points"]
    assert (boxes["points"], boxes["correct"]) == (6, 4)  # points 0-4 and 13; 0, 2, 3, 13 right
    assert boxes["per_class"]["car"]["accuracy"] == pytest.approx(2 / 3)
    assert boxes["per_class"]["car"]["labelled_as"] == pytest.approx({"car": 2 / 3, "truck": 1 / 3})
    assert boxes["per_class"]["pedestrian"]["accuracy"] == pytest.approx(1 / 2)
    assert boxes["per_class"]["barrier"] == {"points": 1, "correct": 1, "accuracy": 1.0, "labelled_as": {"barrier": 1.0}}
    assert set(boxes["per_class"]) == {"car", "pedestrian", "barrier"}  # the ignore box scores nothing
    assert m["car_box_car_share"] == pytest.approx(2 / 3)
    # low points within 20 m: 6, 7, 8, 9 (flat) and 10, 13 (not)
    assert m["low_points_flat"] == {"points": 6, "matching": 4, "share": pytest.approx(4 / 6)}
    # ego lane: 6, 8 (road) and 7 (sidewalk); 9 too far ahead, 10 beside it, 13 in a box
    assert m["ego_lane_driveable"] == {"points": 3, "matching": 2, "share": pytest.approx(2 / 3)}
    assert m["road_mostly_driveable"] is True
    # vehicles: 0, 2, 10 (car), 1 (truck), 12 (bus) of 14
    assert m["vehicles"] == {"points": 14, "matching": 5, "share": pytest.approx(5 / 14)}
    assert m["label_shares"]["driveable_surface"] == pytest.approx(3 / 14)
    g = goals(m)
    assert (g["car_box_car_share"]["met"], g["ego_lane_driveable"]["met"], g["vehicle_share"]["met"]) == (False, True, False)


def test_regions_follow_the_geometry(tiny_keyframe):
    scan = RealScan.from_sample(tiny_keyframe, DICT)
    wide = check_labels(LABELS, scan, ClassGroups.from_dictionary(DICT), NAMES,
                        CheckGeometry(low_height=1.0, flat_radius=30.0, lane_half_width=6.0, lane_length=11.0))
    # below 1 m now: also 2 (0.64), 0, 3, 5, 12 (0.84); within 30 m: also 11 -> 12 points, flat 6, 7, 8, 9, 11
    assert wide["low_points_flat"] == {"points": 12, "matching": 5, "share": pytest.approx(5 / 12)}
    # lane 6 m x 11 m, below 1 m, in no box: 5, 6, 7, 8, 9, 10 (road: 6, 8)
    assert wide["ego_lane_driveable"] == {"points": 6, "matching": 2, "share": pytest.approx(2 / 6)}
    assert wide["road_mostly_driveable"] is False


def test_share_and_box_accuracy_of_nothing():
    assert share(np.array([CAR, ROAD]), np.zeros(2, bool), [ROAD]) == {"points": 0, "matching": 0, "share": None}
    none = box_accuracy(np.array([CAR, ROAD]), np.zeros(2, int), NAMES)
    assert none == {"points": 0, "correct": 0, "accuracy": None, "per_class": {}}


def test_model_arguments_and_bad_requests(tmp_path):
    assert parse_model_argument("old=models/a.pt") == ("old", Path("models/a.pt"))
    assert parse_model_argument("models/ssov_b.ssovpkg") == ("ssov_b", Path("models/ssov_b.ssovpkg"))
    with pytest.raises(ConfigError, match="names must differ"):
        run_realcheck([("a", MODEL), ("a", MODEL)], tmp_path, SAMPLE_DIR)
    with pytest.raises(ConfigError, match="unknown input variant"):
        run_realcheck([("a", MODEL)], tmp_path, SAMPLE_DIR, variants=["grey"])
    with pytest.raises(ConfigError, match="flat"):
        ClassGroups.from_dictionary(load_dictionary("semantickitti"))


def test_command_on_the_shipped_keyframe(tmp_path, capsys):
    out = tmp_path / "realcheck"
    assert main(["realcheck", "--model", str(MODEL), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "realcheck.json").read_text())
    # the keyframe as sample.json describes it: 34,688 points, 69 boxes holding 994 points counted box by box,
    # of which 4 lie where two boxes overlap
    raw = np.fromfile(next(SAMPLE_DIR.glob("*LIDAR_TOP*.pcd.bin")), np.float32).reshape(-1, 5)
    boxes = np.array([b["bbox_3d"] for b in json.loads((SAMPLE_DIR / "sample.json").read_text())["boxes_3d"]["boxes"]])
    per_box = np.stack([points_in_boxes(raw, box[None]) == 0 for box in boxes])
    assert per_box.sum() == 994
    assert doc["scan"]["points"] == 34688 and doc["scan"]["boxes"] == 69
    assert doc["scan"]["points_in_boxes"] == per_box.any(0).sum() == 990
    assert doc["scan"]["near_sensor_points"] == int((np.hypot(raw[:, 0], raw[:, 1]) < 2.5).sum())
    (model,) = doc["models"]
    name = MODEL.stem
    assert model["name"] == name and list(model["variants"]) == ["recorded", "xyz_only", "intensity_0_1"]
    table = (out / "realcheck.md").read_text()
    for v, m in model["variants"].items():
        boxes = m["box_points"]
        assert boxes["points"] == doc["scan"]["box_points"] == sum(c["points"] for c in boxes["per_class"].values())
        assert boxes["correct"] == sum(c["correct"] for c in boxes["per_class"].values())
        assert m["low_points_flat"]["points"] == doc["scan"]["low_points"]
        assert m["vehicles"]["points"] == 34688 and sum(m["label_shares"].values()) == pytest.approx(1.0)
        assert f"| {name} | {v} | {100 * boxes['accuracy']:.1f}% |" in table
        assert f"{name}  {v}" in printed
    # the degraded inputs reach the model: without intensity the labels change; on 0..1 they change for a
    # raw-intensity model and stay the same for one that normalises each cloud's intensity
    shares = [m["label_shares"] for m in model["variants"].values()]
    normalised = "normalized_intensity" in load_checkpoint(MODEL)["input_fields"]
    assert shares[0] != shares[1] and (shares[0] == shares[2]) == normalised
    for png in ("bev_labels.png", "box_accuracy.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    assert not list(out.glob(".*.tmp"))  # written atomically: no temporary left behind

    # the figures docs/real_data_checks.md quotes for the shipped model are what the command gives here
    page = (REPO / "docs" / "real_data_checks.md").read_text()
    rows = [r for r in table.splitlines() if r.startswith(f"| {name} |")]
    assert len(rows) == 3 and all(r in page for r in rows), \
        f"docs/real_data_checks.md does not quote today's figures of {MODEL.name}: rerun the command it gives"


def test_command_errors_are_one_line(tmp_path, capsys):
    assert main(["realcheck", "--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"ssov-train realcheck: error: model file not found: {tmp_path / 'missing.pt'}"
    assert not (tmp_path / "out").exists()


def test_two_models_side_by_side(tmp_path):
    """The same model under two names: two rows, two columns per input, the same figures in both."""
    doc = run_realcheck([("old", MODEL), ("new", MODEL)], tmp_path, SAMPLE_DIR, variants=["xyz_only"])
    old, new = doc["models"]
    assert (old["name"], new["name"]) == ("old", "new")
    for key in ("box_points", "low_points_flat", "ego_lane_driveable", "vehicles", "label_shares"):
        assert old["variants"]["xyz_only"][key] == new["variants"]["xyz_only"][key]
    table = (tmp_path / "realcheck.md").read_text()
    assert "| old | xyz_only |" in table and "| new | xyz_only |" in table
    assert "| box class | points | old · xyz_only | new · xyz_only |" in table
    assert set(doc["files"]) == {"json", "markdown", "bev", "box_accuracy"}
