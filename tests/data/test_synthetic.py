"""The synthetic world: a genuine nuScenes dataset whose lidar, images, labels and boxes agree with each other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.data_classes import LidarPointCloud

from ssov_train.data.synthetic import generate_world, models, writer
from ssov_train.data.synthetic.rig import CAMERA_SPECS, LIDAR_ELEVATIONS_DEG, lidar_to_ego
from ssov_train.errors import ConfigError
from ssov_train.geometry.boxes import points_in_boxes
from ssov_train.geometry.transforms import invert, make_transform

VERSION = "v1.0-tiny"
EGO, SKY = 31, 29


def project(points: np.ndarray, lidar_to_camera: np.ndarray, cam) -> tuple[np.ndarray, ...]:
    """Indices, pixel rows, cols and depths of the points landing in the image (depth > 1 m)."""
    p = points @ lidar_to_camera[:3, :3].T + lidar_to_camera[:3, 3]
    z = p[:, 2]
    front = np.flatnonzero(z > 1.0)
    uv = p[front] @ cam.intrinsics.T
    u, v = uv[:, 0] / uv[:, 2], uv[:, 1] / uv[:, 2]
    inside = (u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)
    return front[inside], v[inside].astype(int), u[inside].astype(int), z[front[inside]]


def unoccluded(rows: np.ndarray, cols: np.ndarray, depth: np.ndarray, cell: int = 4) -> np.ndarray:
    """Points nearest (within 5% + 0.3 m) among the points projecting into their cell x cell pixel block."""
    key = (rows // cell) * 100_000 + cols // cell
    _, inverse = np.unique(key, return_inverse=True)
    nearest = np.full(inverse.max() + 1, np.inf)
    np.minimum.at(nearest, inverse, depth)
    return depth <= nearest[inverse] * 1.05 + 0.3


def camera_to_ego(reader, cam) -> np.ndarray:
    calib = reader.nusc.get("calibrated_sensor", reader.nusc.get("sample_data", cam.token)["calibrated_sensor_token"])
    return make_transform(calib["rotation"], calib["translation"])


def gt_agreement(frame, lidar_to_camera_of=lambda cam: cam.lidar_to_camera) -> tuple[int, int]:
    """(agreeing, total) unoccluded non-ego lidar points whose label equals the camera's per-pixel class."""
    agree = total = 0
    for cam in frame.cameras:
        sem, _ = cam.load_semantic()
        idx, rows, cols, depth = project(frame.points, lidar_to_camera_of(cam), cam)
        keep = unoccluded(rows, cols, depth) & (frame.raw_labels[idx] != EGO)
        agree += int((sem[rows[keep], cols[keep]] == frame.raw_labels[idx[keep]]).sum())
        total += int(keep.sum())
    return agree, total


# ---- the devkit ---------------------------------------------------------------------------------------------
def test_devkit_loads_the_world(world, reader):
    nusc = NuScenes(version=VERSION, dataroot=str(world), verbose=False)
    assert len(nusc.scene) == 2 and len(nusc.sample) == 6 and len(nusc.lidarseg) == 6
    assert nusc.lidarseg_idx2name_mapping == reader.dictionary.raw_classes  # category "index" = raw class
    sample = nusc.sample[0]
    assert set(sample["data"]) == {"LIDAR_TOP", *(s.name for s in CAMERA_SPECS)}
    cloud = LidarPointCloud.from_file(nusc.get_sample_data_path(sample["data"]["LIDAR_TOP"]))
    assert cloud.points.shape[1] == reader.load(sample["token"]).num_points
    _, boxes, intrinsics = nusc.get_sample_data(sample["data"]["CAM_FRONT"])
    assert len(sample["anns"]) > 10 and 0 < len(boxes) <= len(sample["anns"]) and intrinsics.shape == (3, 3)
    log = nusc.get("log", nusc.scene[0]["log_token"])
    mask = nusc.get("map", log["map_token"])["mask"]
    for sd in nusc.sample_data:  # the semantic prior map has the ego on the road, and not 60 m to its side
        if nusc.get("sample", sd["sample_token"])["scene_token"] != nusc.scene[0]["token"]:
            continue
        ego = nusc.get("ego_pose", sd["ego_pose_token"])
        pose = make_transform(ego["rotation"], ego["translation"])
        assert mask.is_on_mask(*pose[:2, 3])[0]
        assert not mask.is_on_mask(*(pose[:2, 3] + 60 * pose[:2, 1]))[0]


# ---- the lidar --------------------------------------------------------------------------------------------
def test_lidar_is_a_32_beam_spinning_sweep(frames):
    for frame in frames:
        p, ring = frame.points.astype(np.float64), frame.ring
        assert 25_000 < frame.num_points <= 32 * 1084  # the full grid minus no-returns (sky, beyond 70 m)
        assert set(np.unique(ring)) == set(range(32))
        elevation = np.degrees(np.arctan2(p[:, 2], np.hypot(p[:, 0], p[:, 1])))
        np.testing.assert_allclose(elevation, np.asarray(LIDAR_ELEVATIONS_DEG)[ring], atol=1e-3)
        steps = np.arctan2(p[:, 1], p[:, 0]) / (2 * np.pi / 1084)
        np.testing.assert_allclose(steps, np.round(steps), atol=1e-2)
        distance = np.linalg.norm(p, axis=1)
        assert distance.max() < 70.1
        assert (frame.intensity == np.round(frame.intensity)).all() and 0 <= frame.intensity.min()
        assert frame.intensity.max() <= 255 and 4 <= np.median(frame.intensity) <= 40
        ego = frame.raw_labels == EGO  # the car's own body, right below the sensor
        assert ego.any() and distance[ego].max() < 3.0
        np.testing.assert_allclose(frame.lidar_to_ego, lidar_to_ego(), atol=1e-9)


def test_world_covers_the_evaluation_classes(reader, frames):
    names = reader.dictionary.class_names
    present = {names[c] for f in frames for c in np.unique(f.labels)}
    assert {"driveable_surface", "sidewalk", "terrain", "manmade", "vegetation", "car", "pedestrian"} <= present
    objects = {"barrier", "bicycle", "bus", "construction_vehicle", "motorcycle", "traffic_cone", "trailer", "truck"}
    assert len(objects & present) >= 5, present


# ---- cameras and per-pixel ground truth ---------------------------------------------------------------------
def test_per_pixel_ground_truth(frames):
    for frame in frames:
        for cam in frame.cameras:
            rgb = cam.load_image()
            sem, inst = cam.load_semantic()
            assert rgb.shape == (180, 320, 3) and rgb.std() > 10
            assert sem.shape == inst.shape == (180, 320) and sem.dtype == np.uint8 and inst.dtype == np.uint16
            assert sem.max() <= 31
            np.testing.assert_array_equal(inst > 0, (sem >= 1) & (sem <= 23))  # instances = thing classes
            ids, first = np.unique(inst, return_index=True)
            for i, at in zip(ids[1:], first[1:]):  # one class per instance
                assert (sem[inst == i] == sem.flat[at]).all()
        assert any((cam.load_semantic()[0] == SKY).any() for cam in frame.cameras)
        back = frame.camera("CAM_BACK").load_semantic()[0]
        assert (back[-3:] == EGO).mean() > 0.5  # the ego's roof and boot at the bottom of the rear image


def test_lidar_labels_agree_with_pixel_ground_truth(frames):
    agree = total = 0
    for frame in frames:
        a, t = gt_agreement(frame)
        agree, total = agree + a, total + t
    assert total > 20_000 and agree / total > 0.95


def test_full_calibration_chain_matters(reader, frames):
    """Cameras fire up to 43 ms before the sweep while the ego drives: ignoring that moves projections."""
    full = static = 0.0
    for frame in frames:
        static_chain = {cam.name: invert(camera_to_ego(reader, cam)) @ frame.lidar_to_ego for cam in frame.cameras}
        cam = frame.camera("CAM_FRONT_LEFT")  # fires first, looks sideways: the largest effect
        idx, rows, cols, _ = project(frame.points, cam.lidar_to_camera, cam)
        p = frame.points[idx] @ static_chain[cam.name][:3, :3].T + static_chain[cam.name][:3, 3]
        uv = p @ cam.intrinsics.T
        shift = np.hypot(uv[:, 0] / uv[:, 2] - cols - 0.5, uv[:, 1] / uv[:, 2] - rows - 0.5)
        assert np.median(shift) > 3.0  # pixels, at 320 px wide
        a, t = gt_agreement(frame)
        full += a / t
        a, t = gt_agreement(frame, lambda c: static_chain[c.name])
        static += a / t
    assert full > static + 0.01 * len(frames)


@pytest.mark.parametrize("model", [
    models.car, models.police_car, models.van, models.ambulance, models.truck, models.bus,
    lambda rng: models.bus(rng, bendy=True), models.trailer, models.excavator, models.person, models.stroller,
    lambda rng: models.person(rng, models.WORKER), lambda rng: models.two_wheeler(rng, motor=True, rider=True),
    lambda rng: models.two_wheeler(rng, motor=False, rider=False), models.dog, models.cone, models.barrier,
    models.bin_on_wheels])
def test_annotation_boxes_enclose_their_models(model):
    rng = np.random.default_rng(0)
    for _ in range(20):
        parts, (length, width, height) = model(rng)
        corners = np.concatenate([p.corners for p in parts])  # each primitive's bounding box
        assert (np.abs(corners[:, 0]) <= length / 2 + 1e-9).all() and (np.abs(corners[:, 1]) <= width / 2 + 1e-9).all()
        assert corners[:, 2].min() >= -1e-9 and corners[:, 2].max() <= height + 1e-9


def test_boxes_hold_their_objects_points(frames):
    for frame in frames:
        things = (frame.raw_labels >= 1) & (frame.raw_labels <= 23)
        grown = frame.boxes + [0, 0, 0, 0.1, 0.1, 0.1, 0]  # range noise puts surface points just outside
        inside = points_in_boxes(frame.points[things], grown)
        assert (inside >= 0).mean() > 0.97
        hit = inside >= 0
        assert (frame.box_raw_classes[inside[hit]] == frame.raw_labels[things][hit]).mean() > 0.97


# ---- determinism, atomic output, configuration ---------------------------------------------------------------
def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_different_seed_different_world(world, tmp_path):
    spec = dict(name="tiny", num_scenes=2, frames_per_scene=3, image_width=320, image_height=180)
    again = files(generate_world(tmp_path / "again", seed=0, workers=1, **spec))
    assert again == files(world)  # also: one worker process or two give the same bytes
    other = generate_world(tmp_path / "other", seed=1, workers=1, **{**spec, "num_scenes": 1})
    sweeps = sorted((other / "samples" / "LIDAR_TOP").iterdir())
    first = sorted(p for p in again if p.startswith("samples/LIDAR_TOP/"))[0]
    assert sweeps[0].read_bytes() != again[first]


def test_interrupted_run_leaves_no_dataset(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(writer, "_render_frame", crash)
    out = tmp_path / "parent" / "world"
    with pytest.raises(RuntimeError, match="killed"):
        generate_world(out, num_scenes=1, frames_per_scene=1, image_width=32, image_height=18, workers=1)
    assert list((tmp_path / "parent").iterdir()) == []  # neither the world nor a partial directory


def test_existing_world_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / "world"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    tiny = dict(num_scenes=1, frames_per_scene=1, image_width=32, image_height=18, workers=1)
    with pytest.raises(ConfigError, match="already exists"):
        generate_world(out, **tiny)
    assert (out / "keep.txt").exists()
    generate_world(out, overwrite=True, **tiny)
    assert not (out / "keep.txt").exists() and (out / "v1.0-synthetic" / "sample.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["world"]


@pytest.mark.parametrize("bad, message", [
    ({"name": "my world"}, "letters, digits"),
    ({"num_scenes": 0}, ">= 1 scene"),
    ({"image_width": 8}, "too small"),
    ({"splits": {"train": ["scene-0000", "scene-0007"]}}, "must list scenes"),
    ({"splits": {"train": "scene-0000"}}, "must list scenes"),
])
def test_bad_settings_are_config_errors(tmp_path, bad, message):
    with pytest.raises(ConfigError, match=message):
        generate_world(tmp_path / "w", **{"num_scenes": 2, "frames_per_scene": 1, **bad})
    assert not (tmp_path / "w").exists()


def test_splits_file_and_defaults(world):
    assert json.loads((world / VERSION / "splits.json").read_text()) == {"train": ["scene-0000"], "val": ["scene-0001"]}
    assert writer.default_splits(1) == {"train": ["scene-0000"], "val": []}
    assert writer.default_splits(10)["val"] == ["scene-0008", "scene-0009"]


def test_rig_is_the_real_nuscenes_rig(sample_dir):
    sample = json.loads((sample_dir / "sample.json").read_text())
    np.testing.assert_allclose(lidar_to_ego(), sample["lidar"]["lidar2ego"], atol=1e-6)
    for spec in CAMERA_SPECS:
        cam = sample["cameras"][spec.name]
        np.testing.assert_allclose(spec.to_ego, cam["cam2ego"], atol=1e-6)
        np.testing.assert_allclose(spec.intrinsics(1600, 900), cam["cam2img"], atol=1e-5)
        assert abs(cam["timestamp_s"] - sample["timestamp_s"] - spec.time_offset_s) < 1e-4
    np.testing.assert_allclose(CAMERA_SPECS[0].intrinsics(800, 450)[:2], np.asarray(
        sample["cameras"]["CAM_FRONT"]["cam2img"])[:2] / 2, atol=1e-5)
