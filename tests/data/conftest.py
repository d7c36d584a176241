"""A tiny synthetic world (2 scenes x 3 keyframes, 320x180 images), generated once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ssov_train.data import Frame
from ssov_train.data.nuscenes import NuScenesReader
from ssov_train.data.synthetic import generate_world

WORLD = {"name": "tiny", "num_scenes": 2, "frames_per_scene": 3, "seed": 0, "image_width": 320, "image_height": 180}
VERSION = "v1.0-tiny"


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """The world's dataroot (read-only: copy it with ``world_copy`` before changing anything)."""
    return generate_world(tmp_path_factory.mktemp("synthetic") / "world", workers=2, **WORLD)


@pytest.fixture(scope="session")
def reader(world) -> NuScenesReader:
    return NuScenesReader(world, version=VERSION)


@pytest.fixture(scope="session")
def frames(reader) -> list[Frame]:
    """Every keyframe of the world, train then val."""
    return [reader.load(t) for split in ("train", "val") for t in reader.split_tokens(split)]


@pytest.fixture
def world_copy(world, tmp_path) -> Path:
    return Path(shutil.copytree(world, tmp_path / "world"))
