"""The teacher runner: batches for teachers that want them, a bad image inside a batch fails alone, torchrun shards."""

from __future__ import annotations

import numpy as np
import pytest

from ssov_train.data.frame import CameraView
from ssov_train.errors import DataError
from ssov_train.teachers.format import TeacherImage, TeacherStore
from ssov_train.teachers.runner import create_store_for, distributed_shard, run_teacher


class FakeBatchTeacher:
    """Writes a one-mask image per camera; raises for cameras named BAD, like a missing image would."""

    name, num_prompts, feature_dim, batch_size = "fake", 3, None, 4

    def __init__(self):
        self.batches: list[list[str]] = []
        self.singles: list[str] = []

    def text_embeddings(self):
        return None

    def _one(self, cam: CameraView) -> TeacherImage:
        if cam.name == "BAD":
            raise DataError(f"camera image missing: {cam.token}")
        return TeacherImage(np.ones((2, 2), np.uint8), np.array([1], np.int32), np.ones(1, np.float32))

    def predict(self, camera, frame=None):
        self.singles.append(camera.token)
        return self._one(camera)

    def predict_batch(self, cameras, frames):
        self.batches.append([c.token for c in cameras])
        return [self._one(c) for c in cameras]


def cams(names):
    return [CameraView(name=n, token=f"t{i}", width=2, height=2, intrinsics=np.eye(3), lidar_to_camera=np.eye(4))
            for i, n in enumerate(names)]


def test_batches_of_batch_size_and_a_bad_image_fails_alone(tmp_path):
    teacher = FakeBatchTeacher()
    store = create_store_for(teacher, tmp_path / "out", "nuscenes")
    cameras = cams(["A"] * 5 + ["BAD"] + ["A"] * 3)
    failures = run_teacher(teacher, cameras, store, progress=False)
    assert [t for t, _ in failures] == ["t5"] and "missing" in failures[0][1]
    assert teacher.batches == [["t0", "t1", "t2", "t3"], ["t4", "t5", "t6", "t7"]]
    assert teacher.singles == ["t4", "t5", "t6", "t7", "t8"]  # the failed batch retried one by one; last batch of one
    assert sorted(p.stem for p in (tmp_path / "out" / "images").iterdir()) == [f"t{i}" for i in range(9) if i != 5]
    teacher.batches, teacher.singles = [], []
    assert [t for t, _ in run_teacher(teacher, cameras, TeacherStore.open(tmp_path / "out"), progress=False)] == ["t5"]
    assert teacher.singles == ["t5"] and teacher.batches == []  # resumed: only the missing image is tried


def test_torchrun_environment_selects_the_shard(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed_shard() is None
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert distributed_shard() == (2, 4)


def test_run_teach_takes_the_torchrun_shard(monkeypatch, tmp_path):
    """Four "ranks" over the real sample's config write disjoint parts of the same store."""
    from ssov_train.config import from_dict
    from ssov_train.pipeline import Stage, SuperpointsStageConfig, run_teach

    stage = Stage.from_config(from_dict(SuperpointsStageConfig, {
        "dataset": {"kind": "sample", "root": "data/nuscenes_sample"},
        "teacher": {"format": "ssov", "root": str(tmp_path / "boxes"), "builtin": "boxes"},
        "output": str(tmp_path / "sp")}))
    assert len(stage.tokens()) == 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert run_teach(stage, progress=False) == []
    assert not list((tmp_path / "boxes" / "images").iterdir())  # rank 1 of 2 has no sample of a 1-sample split
    monkeypatch.setenv("RANK", "0")
    assert run_teach(stage, progress=False) == []
    assert len(list((tmp_path / "boxes" / "images").iterdir())) == 6
    with pytest.raises(ValueError, match="invalid shard"):
        run_teach(stage, shard=(3, 2), progress=False)
