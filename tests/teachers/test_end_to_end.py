"""Every teacher's outputs flow through superpoints, TMP and annotation-free training (CPU-sized).

The three reference teachers are fed their own on-disk layouts (PNG + JSON + .pt, written from oracle outputs on
a tiny synthetic world, as the upstream scripts would); the built-in open_clip teacher runs a random tiny ViT.
A user vocabulary YAML re-targets the pseudo-labels and the trained model's classes without code changes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from ssov_train.config import from_dict
from ssov_train.data.synthetic import generate_world
from ssov_train.pipeline import Stage, SuperpointsStageConfig, run_superpoints_stage, run_teach
from ssov_train.superpoints import iter_superpoints
from ssov_train.teachers.format import TeacherStore
from ssov_train.training.checkpoint import load_checkpoint
from ssov_train.training.engine import train
from ssov_train.training.stages import TrainConfig, build_task

from test_openclip import TINY
from test_reference import write_reference_fixture

VERSION = "v1.0-e2e"
OPENCLIP = {"model": "ssov-test-tiny", "random_init": True, "model_config": TINY, "templates": ["a photo of a {}."],
            "input_short_side": 64, "mask_stride": 4, "device": "cpu"}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A 2-scene x 2-frame world (train: one scene), its oracle teacher outputs, and the same outputs in the three upstream layouts."""
    root = tmp_path_factory.mktemp("e2e")
    dataroot = generate_world(root / "world", name="e2e", num_scenes=2, frames_per_scene=2, seed=1,
                              image_width=192, image_height=108, workers=1)
    stage = _stage(dataroot, root / "sp_oracle", {"format": "ssov", "root": str(root / "oracle"), "builtin": "oracle"},
                   split="train")
    assert not run_teach(stage, progress=False)
    oracle = TeacherStore.open(root / "oracle")
    text = oracle.text_embeddings()
    for kind in ("catseg", "san", "fcclip"):
        te = np.vstack([text, np.zeros((1, text.shape[1]), np.float32) + 0.1]) if kind == "fcclip" else text
        for image in (root / "oracle" / "images").glob("*.npz"):
            out = oracle.load(image.stem)
            feats = (out.features, out.features) if kind == "fcclip" else out.features
            write_reference_fixture(kind, root / kind, image.stem, out.mask_ids, out.prompt_ids, feats, te)
    return {"dataroot": dataroot, "root": root}


def _stage(dataroot: Path, output: Path, teacher: dict, split: str = "train", vocabulary: str = "nuscenes") -> Stage:
    return Stage.from_config(from_dict(SuperpointsStageConfig, {
        "dataset": {"kind": "nuscenes", "root": str(dataroot), "version": VERSION, "split": split},
        "teacher": teacher, "output": str(output), "vocabulary": vocabulary}))


def _train(world: dict, stage: str, out: Path, superpoints: Path, teacher: dict, vocabulary: str = "nuscenes",
           pretraining: Path | None = None) -> Path:
    cfg = from_dict(TrainConfig, {
        "stage": stage, "output": str(out), "superpoints": str(superpoints), "vocabulary": vocabulary,
        "dataset": {"kind": "nuscenes", "root": str(world["dataroot"]), "version": VERSION, "split": "train"},
        "teacher": teacher if stage == "pretrain" else None,
        "model": {"arch": "MinkUNet18", "width": 0.125},
        "optim": {"epochs": 1, "batch_size": 1, "max_steps_per_epoch": 1, "lr": 0.05, "num_workers": 0}})
    return Path(train(build_task(cfg, pretraining), progress=False)["last"])


@pytest.mark.parametrize("teacher", [
    {"format": "catseg"}, {"format": "san"}, {"format": "fcclip"},
    {"format": "ssov", "builtin": "openclip", "openclip": OPENCLIP},
], ids=["catseg", "san", "fcclip", "openclip"])
def test_teacher_outputs_train_tmp_and_annotation_free(world, tmp_path, teacher):
    root = world["root"]
    kind = teacher.get("builtin") or teacher["format"]
    teacher = {**teacher, "root": str(root / kind if kind != "openclip" else tmp_path / "openclip")}
    stage = _stage(world["dataroot"], tmp_path / "sp", teacher)
    if teacher.get("builtin"):
        assert not run_teach(stage, progress=False)
    result = run_superpoints_stage(stage, progress=False)
    assert not result.failed and len(result.done) == 2
    samples = list(iter_superpoints(tmp_path / "sp", "train"))
    assert all(s.superpoint_feature is not None and s.num_superpoints > 0 for s in samples)
    assert np.mean([(s.pseudo_label > 0).mean() for s in samples]) > 0.05
    if kind != "openclip":  # the upstream layouts carry the oracle's masks: the same pseudo-labels, except where
        # overlapping cameras vote (upstream files keep no scores, so every mask votes with weight 1)
        oracle = _stage(world["dataroot"], tmp_path / "sp_oracle",
                        {"format": "ssov", "root": str(root / "oracle")})
        run_superpoints_stage(oracle, progress=False)
        for s, o in zip(samples, iter_superpoints(tmp_path / "sp_oracle", "train")):
            np.testing.assert_array_equal(s.pair_point, o.pair_point)
            single_view = np.bincount(s.pair_point, minlength=s.num_points) == 1
            np.testing.assert_array_equal(s.pseudo_label[single_view], o.pseudo_label[single_view])

    pre = _train(world, "pretrain", tmp_path / "pre", tmp_path / "sp", teacher)
    ckpt = load_checkpoint(pre)
    assert ckpt["stage"] == "pretrain" and ckpt["feature_dim"] == stage.teacher().feature_dim
    assert ckpt["text_embeddings"]["teacher"] == stage.teacher().name
    last = _train(world, "annotation_free", tmp_path / "af", tmp_path / "sp", teacher, pretraining=pre)
    assert load_checkpoint(last)["class_names"] == stage.dictionary.class_names


def test_user_vocabulary_retargets_pseudo_labels_and_model_classes(world, tmp_path):
    """Three user classes (vehicle / ground / greenery) from a YAML file: teacher prompts, pseudo-labels and the
    trained model's classes all follow it; the query fallback knows its prompts."""
    raw = yaml.safe_load(Path("config/vocab/nuscenes.yaml").read_text())["raw_classes"]
    eval_of = {17: "vehicle", 23: "vehicle", 15: "vehicle", 16: "vehicle", 24: "ground", 26: "ground",
               30: "greenery", 27: "greenery"}
    user = {
        "name": "street3", "dataset": "nuscenes",
        "eval_classes": [{"name": "vehicle", "color": [0, 0, 255]}, {"name": "ground", "color": [128, 64, 128]},
                         {"name": "greenery", "color": [0, 160, 0]}],
        "raw_classes": {k: {"name": v["name"], "eval": eval_of.get(k, 0)} for k, v in raw.items()},
        "categories": [{"name": "vehicle", "raw": 17, "prompts": ["car", "truck", "bus"]},
                       {"name": "road", "raw": 24, "prompts": ["road", "asphalt"]},
                       {"name": "plants", "raw": 30, "prompts": ["tree", "bush", "grass"]},
                       {"name": "sky", "raw": 0, "prompts": ["sky"]}],
    }
    vocab_path = tmp_path / "street3.yaml"
    vocab_path.write_text(yaml.safe_dump(user))
    teacher = {"format": "ssov", "root": str(tmp_path / "teacher"), "builtin": "openclip", "openclip": OPENCLIP}
    stage = _stage(world["dataroot"], tmp_path / "sp", teacher, vocabulary=str(vocab_path))
    assert stage.dictionary.num_prompts == 9 and stage.dictionary.class_names == ["ignore", "vehicle", "ground",
                                                                                    "greenery"]
    assert not run_teach(stage, progress=False)
    assert TeacherStore.open(tmp_path / "teacher").meta["vocabulary"] == "street3"
    assert TeacherStore.open(tmp_path / "teacher").text_embeddings().shape == (9, 32)
    assert not run_superpoints_stage(stage, progress=False).failed
    labels = np.concatenate([s.pseudo_label for s in iter_superpoints(tmp_path / "sp", "train")])
    prompts = np.concatenate([s.pseudo_prompt for s in iter_superpoints(tmp_path / "sp", "train")])
    assert labels.max() <= 3 and (labels > 0).any() and prompts.max() < 9
    np.testing.assert_array_equal(labels[prompts >= 0], stage.dictionary.prompt_to_eval[prompts[prompts >= 0]])

    last = _train(world, "annotation_free", tmp_path / "af", tmp_path / "sp", teacher, vocabulary=str(vocab_path))
    ckpt = load_checkpoint(last)
    assert ckpt["class_names"] == ["ignore", "vehicle", "ground", "greenery"] and ckpt["vocabulary"] == "street3"

    from ssov_train.inference import Segmenter, open_backend
    from ssov_train.openvocab.query import query_points

    frame = stage.reader.load(stage.tokens()[0])
    result = query_points(Segmenter(open_backend(last)), frame.points, "asphalt", frame.intensity,
                          dictionary=stage.dictionary)
    assert result.class_index == 2 and result.scores.shape == (frame.num_points,)
