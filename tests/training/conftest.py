"""A tiny synthetic world (2 scenes x 3 keyframes, low resolution) with oracle teacher outputs and superpoints
for both splits, generated once per test session, and helpers to build small training configs on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssov_train.config import from_dict
from ssov_train.data.nuscenes import NuScenesReader
from ssov_train.data.synthetic import generate_world
from ssov_train.pipeline import Stage, SuperpointsStageConfig, run_superpoints_stage, run_teach
from ssov_train.training.stages import TrainConfig

VERSION = "v1.0-tiny"


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> dict[str, Path]:
    """Paths of the world, its teacher outputs and superpoints (read-only for tests)."""
    root = tmp_path_factory.mktemp("training_world")
    dataroot = generate_world(root / "world", name="tiny", num_scenes=2, frames_per_scene=3, seed=0,
                              image_width=320, image_height=180, workers=2)
    paths = {"dataroot": dataroot, "teacher": root / "teacher", "superpoints": root / "superpoints"}
    for split in ("train", "val"):
        cfg = from_dict(SuperpointsStageConfig, {
            "dataset": {"kind": "nuscenes", "root": str(dataroot), "version": VERSION, "split": split},
            "teacher": {"format": "ssov", "root": str(paths["teacher"]), "builtin": "oracle"},
            "output": str(paths["superpoints"])})
        stage = Stage.from_config(cfg)
        assert not run_teach(stage, progress=False)
        assert not run_superpoints_stage(stage, progress=False).failed
    return paths


def make_config(world: dict[str, Path], stage: str, output: Path, **overrides) -> TrainConfig:
    """A CPU-sized config of ``stage`` on the tiny world, on the CPU; ``overrides`` replace top-level sections."""
    data = {
        "stage": stage,
        "dataset": {"kind": "nuscenes", "root": str(world["dataroot"]), "version": VERSION, "split": "train"},
        "output": str(output),
        "model": {"arch": "MinkUNet18", "width": 0.25},
        "optim": {"epochs": 1, "batch_size": 2, "lr": 0.05, "num_workers": 0},
        "device": "cpu",  # the CPU's behaviour (bit-identical resume, ...) also on a GPU machine; test_cuda.py: GPU
    }
    if stage in ("pretrain", "annotation_free"):
        data["superpoints"] = str(world["superpoints"])
    if stage == "pretrain":
        data["teacher"] = {"format": "ssov", "root": str(world["teacher"])}
    data.update(overrides)
    return from_dict(TrainConfig, data)


@pytest.fixture(scope="session")
def reader(world) -> NuScenesReader:
    return NuScenesReader(world["dataroot"], version=VERSION)


@pytest.fixture
def config_factory(world):
    def factory(stage: str, output: Path, **overrides) -> TrainConfig:
        return make_config(world, stage, output, **overrides)

    return factory
