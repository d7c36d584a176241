"""A feature (TMP) model exported by ssov-export carries its teacher's text embeddings: text queries on the
package work without the teacher's outputs, without its text encoder and without torch."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml
from runtime_blocker import blocked
from runtime_scenario import REPO

from ssov_train.openvocab.query import load_scan

torch = pytest.importorskip("torch")  # the export (full environment)

SWEEP = next((REPO / "data" / "nuscenes_sample").glob("*LIDAR_TOP*.pcd.bin"))
DIM = 16


def _feature_checkpoint(path, teacher_root):
    """A randomly initialised TMP model whose checkpoint records the teacher it was distilled from."""
    from ssov_train.config import to_dict
    from ssov_train.geometry.voxelize import VoxelConfig
    from ssov_train.models import MinkUNet, MinkUNetConfig
    from ssov_train.training.checkpoint import save_checkpoint
    from ssov_train.vocab import load_dictionary

    vocab = load_dictionary("nuscenes")
    cfg = MinkUNetConfig(arch="MinkUNet18", width=0.125, out_channels=DIM, normalize_features=True)
    torch.manual_seed(0)
    return save_checkpoint(path, {
        "stage": "pretrain", "model": to_dict(cfg), "voxel": to_dict(VoxelConfig()), "input_fields": ["intensity"],
        "class_names": vocab.class_names, "palette": vocab.palette.tolist(), "vocabulary": "nuscenes",
        "feature_dim": DIM, "state_dict": MinkUNet(cfg).state_dict(),
        "text_embeddings": {"teacher": "t", "root": str(teacher_root), "dim": DIM, "num_prompts": vocab.num_prompts}})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(package, the teacher's prompt embeddings, prompts); the teacher's outputs are deleted after the export."""
    from ssov_export.onnx_export import export_package
    from ssov_train.teachers.format import TeacherStore
    from ssov_train.vocab import load_dictionary

    tmp = tmp_path_factory.mktemp("feature_pkg")
    prompts = load_dictionary("nuscenes").prompts
    text = np.random.default_rng(5).normal(size=(len(prompts), DIM)).astype(np.float32)
    TeacherStore.create(tmp / "teacher", "t", "nuscenes", len(prompts), DIM, text)
    package, _ = export_package(_feature_checkpoint(tmp / "tmp.pt", tmp / "teacher"), tmp / "tmp.ssovpkg",
                                check=False)
    shutil.rmtree(tmp / "teacher")
    return package, text, prompts


def _query(package, xyz, intensity, text):
    from ssov_train.inference import Segmenter, open_backend
    from ssov_train.openvocab.query import query_points, text_provider

    segmenter = Segmenter(open_backend(package))
    result = query_points(segmenter, xyz, text, intensity, provider=text_provider(segmenter.backend))
    return result, segmenter.segment(xyz, intensity).features


def test_the_package_carries_the_teachers_prompt_embeddings(exported):
    from ssov_export.package import load_package
    from ssov_train.openvocab.query import EmbeddingTable

    package, text, prompts = exported
    pkg = load_package(package)
    meta = yaml.safe_load((package / "model.yaml").read_text())["text_embeddings"]
    assert meta["file"] == "text_embeddings.npz" and meta["num_texts"] == len(prompts) and meta["dim"] == DIM
    table = EmbeddingTable.load(pkg.text_embeddings_path)
    assert table.texts == list(prompts)
    np.testing.assert_array_equal(table.embeddings, text)


def test_text_query_on_the_package_without_torch(exported):
    package, text, prompts = exported
    xyz, intensity = (a[:6000] for a in load_scan(SWEEP))
    with blocked():
        result, _ = _query(package, xyz, intensity, "sedan")
    full, features = _query(package, xyz, intensity, "sedan")
    np.testing.assert_array_equal(result.scores, full.scores)
    # the cosine between each point's feature and the teacher's embedding of the prompt "sedan"
    t = text[prompts.index("sedan")]
    expected = features @ t / np.linalg.norm(features, axis=1) / np.linalg.norm(t)
    assert result.mode == "cosine"
    np.testing.assert_allclose(result.scores, expected, atol=1e-5)


def test_text_outside_the_table_and_a_modified_table_are_refused(exported, tmp_path):
    from ssov_export.package import load_package
    from ssov_train.errors import ConfigError, DataError

    package, _, _ = exported
    xyz, intensity = (a[:2000] for a in load_scan(SWEEP))
    with pytest.raises(ConfigError, match="not in the embedding table"):
        _query(package, xyz, intensity, "purple elephant")
    copy = shutil.copytree(package, tmp_path / "copy.ssovpkg")
    np.savez(copy / "text_embeddings.npz", texts=np.array(["sedan"]), embeddings=np.ones((1, DIM), np.float32),
             format=np.array("ssov-text-embeddings"))
    with pytest.raises(DataError, match="text_embeddings.npz: sha256"):
        load_package(copy)


def test_a_class_model_carries_no_text_embeddings(tmp_path):
    from ssov_export.onnx_export import export_package
    from ssov_train.errors import ConfigError

    with pytest.raises(ConfigError, match="feature .pre-training. models"):
        export_package(REPO / "models" / "ssov_synthetic_minkunet34c_w025.pt", tmp_path / "demo.ssovpkg",
                       check=False, text_embeddings=tmp_path / "table.npz")
