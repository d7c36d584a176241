"""Text queries: score_points, embedding providers, the class-model fallback on the shipped demo model, feature
models, and `ssov-train query` writing scores and a heat-map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ssov_train.cli import main
from ssov_train.config import to_dict
from ssov_train.errors import ConfigError, DataError
from ssov_train.geometry.voxelize import VoxelConfig
from ssov_train.inference import Segmenter, open_backend
from ssov_train.models import MinkUNet, MinkUNetConfig
from ssov_train.openvocab.query import (EmbeddingTable, match_class, query_points, score_points, text_provider)
from ssov_train.teachers.format import TeacherStore
from ssov_train.training.checkpoint import save_checkpoint
from ssov_train.vocab import load_dictionary

REPO = Path(__file__).resolve().parents[2]
DEMO_MODEL = REPO / "models" / "ssov_synthetic_minkunet34c_w025.pt"
SWEEP = next((REPO / "data" / "nuscenes_sample").glob("*LIDAR_TOP*.pcd.bin"))
VOCAB = load_dictionary("nuscenes")
TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_score_points_is_the_cosine():
    rng = np.random.default_rng(0)
    f, t = rng.normal(size=(50, 8)) * 3, rng.normal(size=8)
    np.testing.assert_allclose(score_points(f, t), unit(f) @ unit(t), atol=1e-6)
    several = score_points(f, np.stack([t, -t]))
    assert several.shape == (50, 2)
    np.testing.assert_allclose(several[:, 1], -several[:, 0], atol=1e-6)
    f[3] = 0
    assert score_points(f, t)[3] == 0
    with pytest.raises(DataError, match="feature dimension"):
        score_points(f, np.ones(7))


@pytest.mark.parametrize("text, index, how", [
    ("traffic cone", 8, "class"), ("Traffic_Cone", 8, "class"), ("safety cone", 8, "prompt"),
    ("sedan", 4, "prompt"), ("  A person on a bicycle ", 2, "prompt"), ("construction_worker", 7, "category"),
    ("rigid bus", 3, "category"), ("city bus", 3, "prompt"),
])
def test_queries_name_classes_categories_or_prompts(text, index, how):
    m = match_class(text, VOCAB.class_names, VOCAB)
    assert (m.class_index, m.matched) == (index, how)


def test_unknown_and_ignored_queries():
    assert match_class("purple elephant", VOCAB.class_names, VOCAB) is None
    assert match_class("sedan", VOCAB.class_names, None) is None  # without the dictionary: class names only
    with pytest.raises(ConfigError, match="maps to the ignore class"):
        match_class("clear sky", VOCAB.class_names, VOCAB)


def test_embedding_table_round_trip_and_teacher_directory(tmp_path):
    rng = np.random.default_rng(1)
    table = EmbeddingTable(["traffic cone", "car"], rng.normal(size=(2, 6)))
    loaded = EmbeddingTable.load(table.save(tmp_path / "table.npz"))
    np.testing.assert_allclose(loaded.embed(["Car"])[0], unit(table.embeddings[1]), atol=1e-6)
    with pytest.raises(ConfigError, match="not in the embedding table .* free text needs"):
        loaded.embed(["bus"])
    text = unit(rng.normal(size=(VOCAB.num_prompts, 6))).astype(np.float32)
    TeacherStore.create(tmp_path / "teacher", "t", "nuscenes", VOCAB.num_prompts, 6, text)
    from_dir = EmbeddingTable.load(tmp_path / "teacher")
    np.testing.assert_allclose(from_dir.embed(["safety cone"])[0], text[VOCAB.prompts.index("safety cone")], atol=1e-6)
    with pytest.raises(DataError, match="not an ssov text-embedding table|unreadable"):
        np.savez(tmp_path / "other.npz", x=np.zeros(2))
        EmbeddingTable.load(tmp_path / "other.npz")


@pytest.fixture(scope="module")
def sweep():
    raw = np.fromfile(SWEEP, dtype=np.float32).reshape(-1, 5)
    return raw[:, :3], raw[:, 3]


@pytest.fixture(scope="module")
def demo():
    return Segmenter(open_backend(DEMO_MODEL))


def test_class_model_scores_the_named_class_probability(demo, sweep):
    xyz, intensity = sweep
    result = query_points(demo, xyz, "safety cone", intensity)
    probs = demo.segment(xyz, intensity, keep_probs=True).probs
    assert result.mode == "class-probability" and result.class_index == demo.spec.class_names.index("traffic_cone")
    np.testing.assert_allclose(result.scores, probs[:, result.class_index], atol=1e-6)
    assert result.scores.shape == (len(xyz),) and 0 <= result.scores.min() and result.scores.max() <= 1
    with pytest.raises(ConfigError, match="not a class, category or prompt of this class model .*feature-head model"):
        query_points(demo, xyz, "purple elephant", intensity)


def feature_checkpoint(path: Path, dim: int, teacher_root: Path | None) -> Path:
    """A randomly initialised TMP (feature-head) model in the checkpoint format."""
    cfg = MinkUNetConfig(arch="MinkUNet18", width=0.125, out_channels=dim, normalize_features=True)
    torch.manual_seed(0)
    model = MinkUNet(cfg)
    meta = None if teacher_root is None else {"teacher": "t", "root": str(teacher_root), "dim": dim,
                                               "num_prompts": VOCAB.num_prompts}
    return save_checkpoint(path, {
        "stage": "pretrain", "model": to_dict(cfg), "voxel": to_dict(VoxelConfig()), "input_fields": ["intensity"],
        "class_names": VOCAB.class_names, "palette": VOCAB.palette.tolist(), "vocabulary": "nuscenes",
        "feature_dim": dim, "text_embeddings": meta, "state_dict": model.state_dict()})


def test_feature_model_scores_cosine_with_the_teacher_table(tmp_path, sweep):
    xyz, intensity = sweep[0][:4000], sweep[1][:4000]
    text = unit(np.random.default_rng(2).normal(size=(VOCAB.num_prompts, 16))).astype(np.float32)
    TeacherStore.create(tmp_path / "teacher", "t", "nuscenes", VOCAB.num_prompts, 16, text)
    ckpt = feature_checkpoint(tmp_path / "tmp.pt", 16, tmp_path / "teacher")
    seg = Segmenter(open_backend(ckpt))
    provider = text_provider(ckpt)  # the teacher recorded in the checkpoint
    result = query_points(seg, xyz, "sedan", intensity, provider=provider)
    expected = score_points(seg.segment(xyz, intensity).features, text[VOCAB.prompts.index("sedan")])
    assert result.mode == "cosine"
    np.testing.assert_allclose(result.scores, expected, atol=1e-5)
    with pytest.raises(ConfigError, match="needs text embeddings"):
        query_points(seg, xyz, "sedan", intensity)
    wrong_dim = EmbeddingTable(["sedan"], np.ones((1, 8)))
    with pytest.raises(ConfigError, match="dim 8, the model's features 16"):
        query_points(seg, xyz, "sedan", intensity, provider=wrong_dim)


def test_free_text_through_the_open_clip_text_encoder(tmp_path, sweep):
    xyz, intensity = sweep[0][:3000], sweep[1][:3000]
    ckpt = feature_checkpoint(tmp_path / "tmp.pt", 32, None)
    encoder_yaml = tmp_path / "clip.yaml"
    encoder_yaml.write_text(yaml.safe_dump({"teacher": {"openclip": {
        "model": "ssov-test-query", "random_init": True, "model_config": TINY_CLIP, "device": "cpu"}}}))
    provider = text_provider(ckpt, text_encoder=encoder_yaml)
    result = query_points(Segmenter(open_backend(ckpt)), xyz, "a purple elephant", intensity, provider=provider)
    assert result.scores.shape == (3000,) and np.isfinite(result.scores).all()
    assert np.abs(result.scores).max() <= 1 + 1e-5


def test_cli_query_writes_scores_and_heatmap(tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["query", "--resume-path", str(DEMO_MODEL), "--text", "car", "--scan", str(SWEEP),
                 "--out", str(out)]) == 0
    scores = np.load(out / "scores.npy")
    assert scores.shape == (34688,) and (out / "heatmap.png").stat().st_size > 10_000
    summary = yaml.safe_load((out / "query.json").read_text())
    assert summary["mode"] == "class-probability" and summary["score_max"] == pytest.approx(scores.max())
    assert "probability of class car" in capsys.readouterr().out
    assert main(["query", "--resume-path", str(DEMO_MODEL), "--text", "purple elephant", "--scan", str(SWEEP),
                 "--out", str(tmp_path / "q2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "feature-head model" in err[0]
    assert main(["query", "--resume-path", str(DEMO_MODEL), "--text", "car", "--scan", str(tmp_path / "none.bin"),
                 "--out", str(tmp_path / "q3")]) == 2
    assert "scan not found" in capsys.readouterr().err
