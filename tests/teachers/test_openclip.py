"""The built-in open_clip teacher on a tiny, randomly initialised ViT: formats, shapes, determinism, the runner.

Random weights segment nothing meaningful; these tests check the mechanics (MaskCLIP value path, masks as
connected regions, scores, features, text embeddings) and never accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from ssov_train.config import from_dict
from ssov_train.data.frame import CameraView, Frame
from ssov_train.errors import ConfigError, DataError
from ssov_train.teachers.format import TeacherStore
from ssov_train.teachers.openclip import OpenClipConfig, OpenClipModel, OpenClipTeacher
from ssov_train.teachers.runner import create_store_for, run_teacher
from ssov_train.vocab import load_dictionary

# A 2-layer, 64-wide ViT with 16-px patches and a 2-layer text tower: builds in ~50 ms.
TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
H, W = 90, 160


def tiny_config(**overrides) -> OpenClipConfig:
    data = {"model": "ssov-test-tiny", "random_init": True, "model_config": TINY, "templates": ["a photo of a {}."],
            "input_short_side": 64, "mask_stride": 2, "min_mask_area": 0.0, "batch_size": 2, "device": "cpu"}
    data.update(overrides)
    return from_dict(OpenClipConfig, data)


@pytest.fixture(scope="module")
def vocab():
    return load_dictionary("nuscenes")


@pytest.fixture(scope="module")
def teacher(vocab):
    return OpenClipTeacher(vocab, tiny_config())


def image_camera(tmp_path: Path, token: str, seed: int, name: str = "CAM_FRONT") -> CameraView:
    rng = np.random.default_rng(seed)
    img = np.kron(rng.integers(0, 256, size=(H // 15, W // 16, 3)), np.ones((15, 16, 1))).astype(np.uint8)
    path = tmp_path / f"{token}.png"
    Image.fromarray(img).save(path)
    k = np.array([[80.0, 0, W / 2], [0, 80.0, H / 2], [0, 0, 1]])
    return CameraView(name=name, token=token, width=W, height=H, intrinsics=k, lidar_to_camera=np.eye(4),
                      image_path=path)


def test_outputs_have_the_format_and_masks_are_connected_regions(tmp_path, teacher, vocab):
    out = teacher.predict(image_camera(tmp_path, "img0", 0))
    assert out.mask_ids.shape == (H // 2, W // 2)
    out.validate(vocab.num_prompts, teacher.feature_dim, "test")
    k = out.num_masks
    assert k >= 2 and set(np.unique(out.mask_ids)) == set(range(1, k + 1))  # min_mask_area 0: every pixel
    for m in range(1, k + 1):  # each mask is one 8-connected region of a single prompt
        assert ndimage.label(out.mask_ids == m, structure=np.ones((3, 3)))[1] == 1
    # Two masks of the same prompt are never 8-adjacent (else they would be one region).
    for p in np.unique(out.prompt_ids):
        same = np.isin(out.mask_ids, np.flatnonzero(out.prompt_ids == p) + 1)
        assert ndimage.label(same, structure=np.ones((3, 3)))[1] == int((out.prompt_ids == p).sum())
    assert ((out.scores > 0) & (out.scores <= 1)).all()
    np.testing.assert_allclose(np.linalg.norm(out.features, axis=1), 1.0, atol=1e-5)
    text = teacher.text_embeddings()
    assert teacher.feature_dim == 32 and text.shape == (vocab.num_prompts, 32)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)


def test_mask_prompt_is_the_best_prompt_of_its_feature(tmp_path, teacher):
    """Every pixel of a mask preferred the mask's prompt, so their pooled feature ranks it near the top."""
    out = teacher.predict(image_camera(tmp_path, "img1", 1))
    areas = np.bincount(out.mask_ids.ravel(), minlength=out.num_masks + 1)[1:]
    big = int(areas.argmax())
    sims = out.features[big] @ teacher.text_embeddings().T
    assert sims[out.prompt_ids[big]] >= np.quantile(sims, 0.9)


def test_deterministic_and_batch_equals_single(tmp_path, vocab, teacher):
    cams = [image_camera(tmp_path, f"d{i}", 10 + i) for i in range(3)]
    batch = teacher.predict_batch(cams)
    again = OpenClipTeacher(vocab, tiny_config())  # a fresh model with the same seed
    for cam, b in zip(cams, batch):
        single = again.predict(cam)
        np.testing.assert_array_equal(single.mask_ids, b.mask_ids)
        np.testing.assert_array_equal(single.prompt_ids, b.prompt_ids)
        np.testing.assert_allclose(single.features, b.features, atol=1e-5)
    np.testing.assert_array_equal(again.text_embeddings(), teacher.text_embeddings())
    other = OpenClipTeacher(vocab, tiny_config(seed=1))
    assert not np.allclose(other.text_embeddings(), teacher.text_embeddings())


def test_value_path_keeps_patches_independent_in_the_last_block(vocab):
    """MaskCLIP trick: with a single (last) block, a patch's dense feature depends on that patch alone."""
    cfg = tiny_config(model_config={**TINY, "vision_cfg": {**TINY["vision_cfg"], "layers": 1}}, model="ssov-test-1l",
                      input_short_side=64)
    clip = OpenClipModel(cfg)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(1, 64, 128, 3)).astype(np.uint8)
    changed = img.copy()
    changed[0, :16, :16] = 255 - changed[0, :16, :16]  # patch (0, 0) only
    a = clip.dense_features(img)[0].numpy()
    b = clip.dense_features(changed)[0].numpy()
    assert a.shape == (32, 4, 8)
    diff = np.abs(a - b).max(0)
    assert diff[0, 0] > 1e-3 and np.delete(diff.ravel(), 0).max() < 1e-5


def test_runner_writes_a_store_with_dense_features_and_resumes(tmp_path, vocab):
    teacher = OpenClipTeacher(vocab, tiny_config(store_dense_features=True))
    cams = [image_camera(tmp_path, f"r{i}", 20 + i, name=f"CAM_{i}") for i in range(3)]
    cams[1].image_path.unlink()  # a missing image fails alone, inside a batch of two
    frame = Frame(token="s", dataset="test", points=np.zeros((1, 3), np.float32), intensity=np.zeros(1, np.float32),
                  cameras=cams)
    store = create_store_for(teacher, tmp_path / "out", vocab.name)
    failures = run_teacher(teacher, [frame], store, progress=False)
    assert [t for t, _ in failures] == ["r1"] and "missing" in failures[0][1]
    reopened = TeacherStore.open(tmp_path / "out")
    assert reopened.name == teacher.name and reopened.feature_dim == 32
    assert reopened.load("r2").dense_features is None  # read only when asked for
    loaded = reopened.load("r2", dense=True)
    assert loaded.dense_features.shape == (4, 7, 32) and loaded.dense_features.dtype == np.float16
    np.testing.assert_allclose(loaded.features, teacher.predict(cams[2]).features, atol=2e-3)  # fp16 storage
    np.testing.assert_allclose(reopened.text_embeddings(), teacher.text_embeddings())
    assert [t for t, _ in run_teacher(teacher, [frame], reopened, progress=False)] == ["r1"]


def test_missing_weights_and_unsupported_models_are_clear_errors(tmp_path, vocab):
    with pytest.raises(ConfigError, match="checkpoint is not set"):
        tiny_config(random_init=False)
    missing = tmp_path / "weights" / "vit_b16.safetensors"
    with pytest.raises(DataError, match=f"open_clip checkpoint not found: {missing}"):
        OpenClipModel(tiny_config(random_init=False, checkpoint=str(missing)))
    with pytest.raises(ConfigError, match="unknown open_clip model 'ViT-Z-99'"):
        OpenClipModel(tiny_config(model="ViT-Z-99", model_config={}))
    resnet = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8},
              "text_cfg": TINY["text_cfg"]}
    with pytest.raises(ConfigError, match="plain ViT image tower"):
        OpenClipModel(tiny_config(model="ssov-test-rn", model_config=resnet))


def test_local_checkpoint_loads_exactly(tmp_path, vocab):
    """A saved state dict (as open_clip training writes it) loads into the same architecture bit for bit."""
    import torch

    clip = OpenClipModel(tiny_config())
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": clip.model.state_dict()}, path)
    loaded = OpenClipModel(tiny_config(random_init=False, checkpoint=str(path), seed=5))
    assert loaded.weights == "tiny.pt"
    np.testing.assert_array_equal(loaded.encode_text(["car"]), clip.encode_text(["car"]))


def test_text_encoding_without_padding_equals_open_clip(vocab):
    """The causal text tower lets the padding columns go: same embeddings as open_clip's encode_text."""
    import torch

    import open_clip

    clip = OpenClipModel(tiny_config())
    assert isinstance(clip.model, open_clip.CLIP) and clip.model.text_pool_type == "argmax"  # the short path
    tokens = clip.tokenizer(["a photo of a car.", "a photo of a construction zone barrier in a street scene."])
    with torch.no_grad():
        full = clip.model.encode_text(tokens)
        short = clip._encode_tokens(tokens)
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-5)
