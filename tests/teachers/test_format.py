"""The native ssov teacher-output format: round trip, validation, reopening, corruption, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ssov_train.errors import DataError
from ssov_train.teachers.format import TeacherImage, TeacherStore, open_teacher

P, D = 12, 8


def _image(rng: np.random.Generator, k: int = 3, d: int = D, h: int = 6, w: int = 10) -> TeacherImage:
    feats = rng.normal(size=(k, d)).astype(np.float32)
    return TeacherImage(
        mask_ids=rng.integers(0, k + 1, size=(h, w)).astype(np.uint16),
        prompt_ids=rng.integers(0, P, size=k).astype(np.int32),
        scores=rng.uniform(size=k).astype(np.float32),
        features=feats / np.linalg.norm(feats, axis=1, keepdims=True),
    )


def _store(root: Path, **kw) -> TeacherStore:
    args = dict(teacher="oracle", vocabulary="nuscenes", num_prompts=P, feature_dim=D)
    args.update(kw)
    return TeacherStore.create(root, **args)


def _tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_round_trip_with_fp16_features(tmp_path):
    rng = np.random.default_rng(0)
    te = rng.normal(size=(P, D)).astype(np.float32)
    store = _store(tmp_path / "t", text_embeddings=te)
    img = _image(rng)
    store.write("tok_1", img)

    reopened = open_teacher("ssov", tmp_path / "t")
    assert (reopened.name, reopened.num_prompts, reopened.feature_dim) == ("oracle", P, D)
    assert reopened.has("tok_1") and not reopened.has("tok_2")
    np.testing.assert_array_equal(reopened.text_embeddings(), te)
    out = reopened.load("tok_1")
    assert out.mask_ids.dtype == np.uint8  # stored compactly: fewer than 256 masks
    np.testing.assert_array_equal(out.mask_ids, img.mask_ids)
    np.testing.assert_array_equal(out.prompt_ids, img.prompt_ids)
    np.testing.assert_array_equal(out.scores, img.scores)
    with np.load(tmp_path / "t" / "images" / "tok_1.npz") as z:
        assert z["features"].dtype == np.float16  # stored half precision ...
    assert out.features.dtype == np.float32  # ... served as float32
    np.testing.assert_allclose(out.features, img.features, atol=1e-3)


def test_round_trip_without_features(tmp_path):
    store = _store(tmp_path, feature_dim=None)
    img = _image(np.random.default_rng(1))
    img.features = None
    store.write("a", img)
    assert store.load("a").features is None
    assert store.text_embeddings() is None


@pytest.mark.parametrize("mutate, match", [
    (lambda im: setattr(im, "mask_ids", np.full((4, 4), 4, np.uint16)), "mask id 4 used but only 3 masks"),
    (lambda im: setattr(im, "prompt_ids", np.array([0, 1, P], np.int32)), "unknown prompt id"),
    (lambda im: setattr(im, "features", np.ones((3, D + 1), np.float32)), "features must be"),
    (lambda im: setattr(im, "scores", np.array([0.5, np.nan, 1.0], np.float32)), "NaN"),
])
def test_write_validates(tmp_path, mutate, match):
    store = _store(tmp_path)
    img = _image(np.random.default_rng(2))
    mutate(img)
    with pytest.raises(DataError, match=match):
        store.write("bad", img)
    assert not store.has("bad")


def test_text_embeddings_shape_checked(tmp_path):
    with pytest.raises(DataError, match="text embeddings must be"):
        _store(tmp_path, text_embeddings=np.zeros((P - 1, D), np.float32))


def test_reopen_same_settings_ok_other_vocabulary_errors(tmp_path):
    _store(tmp_path)
    assert _store(tmp_path).num_prompts == P
    with pytest.raises(DataError, match="use another output directory"):
        _store(tmp_path, vocabulary="semantickitti")
    with pytest.raises(DataError, match="use another output directory"):
        _store(tmp_path, feature_dim=D * 2)


def test_open_rejects_foreign_or_missing_dirs(tmp_path):
    with pytest.raises(DataError, match="missing teacher.json"):
        TeacherStore.open(tmp_path)
    (tmp_path / "teacher.json").write_text('{"format": "other", "version": 1, "num_prompts": 3}')
    with pytest.raises(DataError, match="not an ssov teacher-output directory"):
        TeacherStore.open(tmp_path)
    (tmp_path / "teacher.json").write_text('{"format": "ssov-teacher", "version": 99, "num_prompts": 3}')
    with pytest.raises(DataError, match="version 99"):
        TeacherStore.open(tmp_path)


def test_corrupt_npz_is_a_data_error(tmp_path):
    store = _store(tmp_path)
    (tmp_path / "images" / "junk.npz").write_bytes(b"this is not an npz file at all")
    with pytest.raises(DataError, match="junk.npz"):
        store.load("junk")
    with pytest.raises(DataError, match="no output for image"):
        store.load("absent")


@pytest.mark.parametrize("damage", [
    "truncate",
    "flip",
])
def test_damaged_npz_is_a_data_error(tmp_path, damage):
    store = _store(tmp_path)
    store.write("img", _image(np.random.default_rng(3), h=60, w=80))
    path = tmp_path / "images" / "img.npz"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[60:90] = bytes(30)  # inside the first member's compressed stream
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="img.npz"):
        store.load("img")


def test_invalid_token_refused(tmp_path):
    store = _store(tmp_path)
    with pytest.raises(DataError, match="invalid image token"):
        store.has("../escape")


def test_writes_are_atomic(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    store = _store(tmp_path, text_embeddings=rng.normal(size=(P, D)))
    good = _image(rng)
    for i in range(3):
        store.write(f"img_{i}", good)
    assert _tmp_files(tmp_path) == []

    # A writer killed mid-file leaves neither a partial output nor a temporary behind, and an existing
    # output survives a failed overwrite.
    def crash(f, array, **kwargs):
        f.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np.lib.format, "write_array", crash)
    for token in ("img_0", "new"):
        with pytest.raises(KeyboardInterrupt):
            store.write(token, _image(rng))
    monkeypatch.undo()
    assert _tmp_files(tmp_path) == []
    assert not store.has("new")
    np.testing.assert_array_equal(store.load("img_0").mask_ids, good.mask_ids)
