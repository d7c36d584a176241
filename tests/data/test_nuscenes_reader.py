"""NuScenesReader on a synthetic world (a genuine nuScenes-format dataset): splits, frames, chain, bad files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.splits import create_splits_scenes

from ssov_train.data.nuscenes import CAMERAS, NuScenesReader
from ssov_train.data.synthetic import generate_world
from ssov_train.data.synthetic.rig import CAMERA_SPECS
from ssov_train.errors import DataError

VERSION = "v1.0-tiny"


def scene_of(reader: NuScenesReader, sample_token: str) -> str:
    return reader.nusc.get("scene", reader.nusc.get("sample", sample_token)["scene_token"])["name"]


# ---- splits -------------------------------------------------------------------------------------------------
def test_split_tokens_are_scene_by_scene_in_time_order(reader):
    for split, scene in (("train", "scene-0000"), ("val", "scene-0001")):
        tokens = reader.split_tokens(split)
        assert len(tokens) == 3 and {scene_of(reader, t) for t in tokens} == {scene}
        times = [reader.nusc.get("sample", t)["timestamp"] for t in tokens]
        assert times == sorted(times) and len(set(times)) == 3


def test_unknown_split_lists_the_available_ones(reader):
    with pytest.raises(DataError, match=r"no split 'test'; available: \['train', 'val'\]"):
        reader.split_tokens("test")


def test_custom_split_problems(world_copy):
    splits = world_copy / VERSION / "splits.json"
    splits.write_text(json.dumps({"train": ["scene-0000", "scene-0042"]}))
    with pytest.raises(DataError, match="scene-0042"):
        NuScenesReader(world_copy, VERSION).split_tokens("train")
    splits.unlink()
    with pytest.raises(DataError, match="splits.json does not exist"):
        NuScenesReader(world_copy, VERSION).split_tokens("train")


def test_official_versions_use_the_devkit_splits(tmp_path):
    """A world written as v1.0-mini whose ten scenes carry the mini scene names."""
    root = generate_world(tmp_path / "mini", name="mini", num_scenes=10, frames_per_scene=1, image_width=32,
                          image_height=18, splits={}, workers=1)
    official = create_splits_scenes()
    names = sorted(official["mini_train"] + official["mini_val"])
    scene_table = root / "v1.0-mini" / "scene.json"
    scenes = json.loads(scene_table.read_text())
    for scene, name in zip(scenes, names):
        scene["name"] = name
    scene_table.write_text(json.dumps(scenes))
    reader = NuScenesReader(root, "v1.0-mini")
    train, val = reader.split_tokens("train"), reader.split_tokens("val")
    assert [scene_of(reader, t) for t in train] == [n for n in names if n in official["mini_train"]]
    assert {scene_of(reader, t) for t in val} == set(official["mini_val"])
    with pytest.raises(DataError, match=r"available: \['train', 'val'\]"):
        reader.split_tokens("test")


# ---- frames -------------------------------------------------------------------------------------------------
def test_frame_contents(reader):
    token = reader.split_tokens("val")[1]
    frame = reader.load(token)
    n = frame.num_points
    assert frame.token == token and frame.dataset == "synthetic" and frame.scene == "scene-0001"
    assert 25_000 < n <= 32 * 1084 and frame.points.dtype == np.float32 and frame.intensity.shape == (n,)
    assert frame.ring.shape == (n,) and frame.ring.min() == 0 and frame.ring.max() == 31
    assert frame.raw_labels.dtype == np.uint8 and frame.raw_labels.shape == (n,)
    np.testing.assert_array_equal(frame.labels, reader.dictionary.map_raw(frame.raw_labels))
    lidar = reader.nusc.get("sample_data", reader.nusc.get("sample", token)["data"]["LIDAR_TOP"])
    assert frame.timestamp_us == lidar["timestamp"]
    assert frame.lidar_to_ego.shape == frame.ego_to_global.shape == (4, 4)
    assert [c.name for c in frame.cameras] == list(CAMERAS)
    for cam, spec in zip(frame.cameras, sorted(CAMERA_SPECS, key=lambda s: CAMERAS.index(s.name))):
        assert (cam.width, cam.height) == (320, 180)
        np.testing.assert_allclose(cam.intrinsics, spec.intrinsics(320, 180))
        assert 0 < frame.timestamp_us - cam.timestamp_us < 50_000  # cameras fire before the sweep
        assert cam.image_path.is_file() and cam.semantic_path.is_file() and cam.instance_path.is_file()
        assert cam.semantic_path.stem == cam.image_path.stem
    assert frame.boxes.shape[1] == 7 and len(frame.boxes) == len(frame.box_raw_classes) > 10
    assert set(frame.box_raw_classes) <= set(range(1, 24))


def test_camera_subset_and_unknown_camera(world):
    frame = NuScenesReader(world, VERSION, cameras=["CAM_BACK", "CAM_FRONT"]).load(
        NuScenesReader(world, VERSION).split_tokens("train")[0])
    assert [c.name for c in frame.cameras] == ["CAM_BACK", "CAM_FRONT"]
    with pytest.raises(DataError, match="CAM_TOP"):
        NuScenesReader(world, VERSION, cameras=["CAM_TOP"])


def test_lidar_to_camera_matches_the_devkit_projection(world, reader):
    """The devkit's own map_pointcloud_to_image (full ego-pose chain) lands every point where ours does."""
    nusc = NuScenes(version=VERSION, dataroot=str(world), verbose=False)
    for token in reader.split_tokens("train"):
        frame = reader.load(token)
        sample = nusc.get("sample", token)
        for cam in frame.cameras:
            expected, _, _ = nusc.explorer.map_pointcloud_to_image(sample["data"]["LIDAR_TOP"], cam.token)
            p = frame.points.astype(np.float64) @ cam.lidar_to_camera[:3, :3].T + cam.lidar_to_camera[:3, 3]
            uv = p @ cam.intrinsics.T
            u, v = uv[:, 0] / uv[:, 2], uv[:, 1] / uv[:, 2]
            keep = (p[:, 2] > 1.0) & (u > 1) & (u < cam.width - 1) & (v > 1) & (v < cam.height - 1)
            assert expected.shape[1] == keep.sum() > 100
            np.testing.assert_allclose(np.c_[u[keep], v[keep]], expected[:2].T, atol=1e-2)


def test_frames_without_lidarseg_have_no_labels(world_copy):
    (world_copy / VERSION / "lidarseg.json").unlink()
    shutil.rmtree(world_copy / "lidarseg")
    reader = NuScenesReader(world_copy, VERSION)
    frame = reader.load(reader.split_tokens("train")[0])
    assert frame.raw_labels is None and frame.labels is None and frame.num_points > 25_000


# ---- bad data ------------------------------------------------------------------------------------------------
def _lidar_file(reader, token):
    return reader.root / reader.nusc.get("sample_data", reader.nusc.get("sample", token)["data"]["LIDAR_TOP"])[
        "filename"]


def truncate_sweep(reader, token):
    path = _lidar_file(reader, token)
    path.write_bytes(path.read_bytes()[:1234])
    return path.name, "truncated"


def shorten_labels(reader, token):
    path = reader.root / "lidarseg" / VERSION / f"{reader.nusc.get('sample', token)['data']['LIDAR_TOP']}_lidarseg.bin"
    path.write_bytes(path.read_bytes()[:-5])
    return path.name, "labels for"


def delete_image(reader, token):
    path = reader.root / reader.nusc.get("sample_data", reader.nusc.get("sample", token)["data"]["CAM_BACK"])[
        "filename"]
    path.unlink()
    return path.name, "camera image missing"


def delete_sweep(reader, token):
    path = _lidar_file(reader, token)
    path.unlink()
    return path.name, "missing"


@pytest.mark.parametrize("damage", [truncate_sweep, shorten_labels, delete_image, delete_sweep])
def test_bad_files_are_data_errors_naming_file_and_sample(world_copy, damage):
    reader = NuScenesReader(world_copy, VERSION)
    token = reader.split_tokens("val")[0]
    name, what = damage(reader, token)
    with pytest.raises(DataError, match=what) as err:
        reader.load(token)
    assert name in str(err.value) and token in str(err.value)
    reader.load(reader.split_tokens("val")[1])  # the other samples still load


def test_missing_version_or_sample(world):
    with pytest.raises(DataError, match="cannot load nuScenes v1.0-nope"):
        NuScenesReader(world, "v1.0-nope")
    with pytest.raises(DataError, match="no sample 'deadbeef'"):
        NuScenesReader(world, VERSION).load("deadbeef")
