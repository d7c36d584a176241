"""Reference-teacher readers (CAT-Seg / SAN / FC-CLIP on-disk outputs) and their import into the ssov format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pytest
import torch
from PIL import Image

from ssov_train.errors import ConfigError, DataError
from ssov_train.teachers.format import TeacherStore, open_teacher
from ssov_train.teachers.reference import import_reference, open_reference

P, D = 175, 16  # the nuScenes vocabulary's prompt count; a small feature dim
KINDS = ("catseg", "san", "fcclip")


def write_reference_fixture(kind: str, root: Path, token: str, mask_ids: np.ndarray, prompt_ids: Sequence[int],
                            features, text_embeddings: Optional[np.ndarray]) -> None:
    """Write one image the way the upstream superpixel_generation scripts do.

    ``features``: (K, D) per mask, or for FC-CLIP a pair (in_vocab, out_vocab) of (K, D); the zero
    placeholder row 0 is added here.  ``text_embeddings`` is written once, like upstream (None: skip).
    """
    root.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask_ids.astype(np.uint8)).save(root / f"{token}.png")
    if kind == "fcclip":
        segments = [{"id": i + 1, "isthing": int(p) < 93, "category_id": int(p)} for i, p in enumerate(prompt_ids)]
    else:
        segments = [{"id": i + 1, "category_id": int(p), "area": int((mask_ids == i + 1).sum())}
                    for i, p in enumerate(prompt_ids)]
    with open(root / f"{token}.json", "w") as f:
        json.dump(segments, f)

    def with_placeholder(x: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        return torch.cat([torch.zeros(1, x.shape[1]), x], dim=0)

    if kind == "fcclip":
        torch.save([with_placeholder(features[0]), with_placeholder(features[1])], root / f"{token}.pt")
    else:
        torch.save(with_placeholder(features), root / f"{token}.pt")
    text_path = root / "text_embedding.pt"
    if text_embeddings is not None and not text_path.exists():
        torch.save(torch.as_tensor(np.asarray(text_embeddings, dtype=np.float32)), text_path)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _text_rows(kind: str, rng: np.random.Generator, p: int = P) -> np.ndarray:
    """What each teacher writes: FC-CLIP appends a void row."""
    return rng.normal(size=(p + (kind == "fcclip"), D)).astype(np.float32)


class Sample:
    """One image's inputs, kept to compare the readers' outputs against."""

    def __init__(self, kind: str, rng: np.random.Generator, prompt_ids=(96, 0, 165), shape=(9, 16)):
        k = len(prompt_ids)
        self.prompt_ids = np.array(prompt_ids, dtype=np.int32)
        self.mask_ids = rng.integers(0 if kind == "fcclip" else 1, k + 1, size=shape).astype(np.uint8)
        self.in_vocab = rng.normal(size=(k, D)).astype(np.float32) * 3
        self.out_vocab = rng.normal(size=(k, D)).astype(np.float32) * 3
        self.features = (self.in_vocab, self.out_vocab) if kind == "fcclip" else self.out_vocab


def _write(kind: str, root: Path, token: str, sample: Sample, text: Optional[np.ndarray]) -> None:
    write_reference_fixture(kind, root, token, sample.mask_ids, sample.prompt_ids, sample.features, text)


@pytest.mark.parametrize("kind", KINDS)
def test_reader_returns_per_mask_prompts_and_features(tmp_path, kind):
    rng = np.random.default_rng(0)
    text = _text_rows(kind, rng)
    samples = {"tok_a": Sample(kind, rng), "tok_b": Sample(kind, rng, prompt_ids=(3, 174, 3, 50))}
    for token, s in samples.items():
        _write(kind, tmp_path, token, s, text)

    src = open_teacher(kind, tmp_path, num_prompts=P)
    assert (src.name, src.num_prompts, src.feature_dim) == (kind, P, D)
    np.testing.assert_allclose(src.text_embeddings(), _unit(text[:P]), rtol=1e-6)
    assert src.tokens() == ["tok_a", "tok_b"]
    for token, s in samples.items():
        assert src.has(token)
        out = src.load(token)
        np.testing.assert_array_equal(out.mask_ids, s.mask_ids)
        assert out.mask_ids.dtype == np.uint16
        np.testing.assert_array_equal(out.prompt_ids, s.prompt_ids)  # mask k -> category_id of JSON id k
        np.testing.assert_array_equal(out.scores, np.ones(len(s.prompt_ids), np.float32))
        np.testing.assert_allclose(out.features, _unit(s.out_vocab), rtol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(out.features, axis=1), 1.0, rtol=1e-6)
    assert not src.has("tok_c")


def test_prompt_count_taken_from_text_embeddings_when_not_given(tmp_path):
    rng = np.random.default_rng(1)
    for kind in KINDS:
        _write(kind, tmp_path / kind, "t", Sample(kind, rng, prompt_ids=(0, 1)), _text_rows(kind, rng, p=5))
        assert open_reference(kind, tmp_path / kind).num_prompts == 5


def test_fcclip_in_and_out_vocab_pick_the_right_tensor(tmp_path):
    rng = np.random.default_rng(2)
    s = Sample("fcclip", rng)
    _write("fcclip", tmp_path, "t", s, _text_rows("fcclip", rng))
    default = open_reference("fcclip", tmp_path, num_prompts=P)
    out_v = open_reference("fcclip", tmp_path, num_prompts=P, fcclip_features="out_vocab")
    in_v = open_teacher("fcclip", tmp_path, num_prompts=P, fcclip_features="in_vocab")
    np.testing.assert_allclose(default.load("t").features, _unit(s.out_vocab), rtol=1e-5)
    np.testing.assert_allclose(out_v.load("t").features, _unit(s.out_vocab), rtol=1e-5)
    np.testing.assert_allclose(in_v.load("t").features, _unit(s.in_vocab), rtol=1e-5)
    assert (default.name, in_v.name) == ("fcclip", "fcclip-in_vocab")
    with pytest.raises(ConfigError, match="in_vocab"):
        open_reference("fcclip", tmp_path, num_prompts=P, fcclip_features="both")


def test_fcclip_void_row_trimmed_other_counts_refused(tmp_path):
    rng = np.random.default_rng(3)
    text = rng.normal(size=(P + 1, D)).astype(np.float32)
    _write("fcclip", tmp_path / "fc", "t", Sample("fcclip", rng), text)
    te = open_reference("fcclip", tmp_path / "fc", num_prompts=P).text_embeddings()
    assert te.shape == (P, D)
    np.testing.assert_allclose(te, _unit(text[:P]), rtol=1e-6)  # the *last* row is the one dropped

    for kind, rows in [("fcclip", P - 1), ("fcclip", P + 2), ("catseg", P + 1), ("san", P - 1)]:
        root = tmp_path / f"{kind}_{rows}"
        _write(kind, root, "t", Sample(kind, rng), rng.normal(size=(rows, D)).astype(np.float32))
        with pytest.raises(DataError, match=rf"text_embedding\.pt: {rows} text embeddings, expected {P}"):
            open_reference(kind, root, num_prompts=P)


def test_missing_text_embeddings_need_num_prompts(tmp_path):
    rng = np.random.default_rng(4)
    s = Sample("san", rng)
    _write("san", tmp_path, "t", s, None)
    with pytest.raises(DataError, match="pass num_prompts"):
        open_reference("san", tmp_path)
    src = open_reference("san", tmp_path, num_prompts=P)
    assert src.text_embeddings() is None and src.feature_dim is None
    np.testing.assert_array_equal(src.load("t").prompt_ids, s.prompt_ids)


class _Payload:
    """Unpickling this would run code (it touches a marker file): weights_only loading must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_objects_are_refused(tmp_path):
    rng = np.random.default_rng(5)
    marker = tmp_path / "pwned"
    _write("catseg", tmp_path / "t", "img", Sample("catseg", rng), _text_rows("catseg", rng))
    torch.save(_Payload(marker), tmp_path / "t" / "img.pt")
    src = open_reference("catseg", tmp_path / "t", num_prompts=P)
    with pytest.raises(DataError, match=r"img\.pt: refused, not a plain tensor file \(Unsupported global"):
        src.load("img")

    torch.save({"embeddings": _Payload(marker)}, tmp_path / "t" / "text_embedding.pt")
    with pytest.raises(DataError, match=r"text_embedding\.pt: refused, not a plain tensor file"):
        open_reference("catseg", tmp_path / "t", num_prompts=P)
    assert not marker.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_images_name_the_file(tmp_path, kind):
    rng = np.random.default_rng(6)
    text = _text_rows(kind, rng)

    def fresh(token: str, **kw) -> Sample:
        s = Sample(kind, rng, **kw)
        _write(kind, tmp_path, token, s, text)
        return s

    # A PNG mask id with no JSON entry.
    s = fresh("extra_id")
    Image.fromarray(np.full_like(s.mask_ids, 4)).save(tmp_path / "extra_id.png")
    # JSON ids out of order.
    fresh("order")
    segs = json.loads((tmp_path / "order.json").read_text())
    segs[0]["id"], segs[1]["id"] = 2, 1
    (tmp_path / "order.json").write_text(json.dumps(segs))
    # Feature rows != K + 1 (the placeholder row missing).
    fresh("rows")
    feats = torch.zeros(3, D)
    torch.save([feats, feats] if kind == "fcclip" else feats, tmp_path / "rows.pt")
    # A prompt id outside the vocabulary.
    fresh("prompt", prompt_ids=(0, P))
    # Wrong feature dim.
    fresh("dim")
    feats = torch.zeros(4, D + 1)
    torch.save([feats, feats] if kind == "fcclip" else feats, tmp_path / "dim.pt")
    # A truncated .pt (a copy cut short).
    fresh("cut")
    data = (tmp_path / "cut.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    # A file missing altogether.
    fresh("nojson")
    (tmp_path / "nojson.json").unlink()

    src = open_reference(kind, tmp_path, num_prompts=P)
    cases = {
        "extra_id": r"extra_id\.png: mask id\(s\) \[4\] have no entry in extra_id\.json",
        "order": r"order\.json: segment ids must be 1\.\.K in order",
        "rows": r"rows\.pt: 3 feature rows, expected K\+1 = 4",
        "prompt": rf"prompt\.json: category_id\(s\) \[{P}\] outside",
        "dim": rf"dim\.pt: feature dim {D + 1}",
        "cut": r"cut\.pt: corrupt or not a torch file \(PytorchStreamReader failed",
        "nojson": r"missing file .*nojson\.json",
    }
    for token, match in cases.items():
        with pytest.raises(DataError, match=match):
            src.load(token)
    assert not src.has("nojson")


def test_fcclip_pt_must_be_a_pair(tmp_path):
    rng = np.random.default_rng(7)
    _write("fcclip", tmp_path, "t", Sample("fcclip", rng), _text_rows("fcclip", rng))
    torch.save(torch.zeros(4, D), tmp_path / "t.pt")  # a CAT-Seg-style single tensor
    with pytest.raises(DataError, match=r"t\.pt: FC-CLIP features must be a 2-element list"):
        open_reference("fcclip", tmp_path, num_prompts=P).load("t")


def test_unknown_kind_lists_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown reference teacher 'odise'.*catseg.*san.*fcclip"):
        open_teacher("odise", tmp_path, num_prompts=P)


@pytest.mark.parametrize("kind", KINDS)
def test_import_reference_round_trip_and_bad_images(tmp_path, kind):
    rng = np.random.default_rng(8)
    src_root, dst = tmp_path / "src", tmp_path / "dst"
    text = _text_rows(kind, rng)
    samples = {f"cam{i}": Sample(kind, rng, prompt_ids=tuple(rng.integers(0, P, size=i + 1))) for i in range(3)}
    for token, s in samples.items():
        _write(kind, src_root, token, s, text)
    Image.new("RGB", (16, 9)).save(src_root / "cam0_demo.png")  # upstream's visualisation: not an output
    _write(kind, src_root, "broken", Sample(kind, rng), None)
    (src_root / "broken.pt").unlink()
    _write(kind, src_root, "badjson", Sample(kind, rng), None)
    (src_root / "badjson.json").write_text("[{")

    failed = import_reference(kind, src_root, dst)
    assert [t for t, _ in failed] == ["badjson", "broken"]
    assert "badjson.json: invalid JSON" in failed[0][1] and "broken.pt" in failed[1][1]

    store = TeacherStore.open(dst)
    assert (store.name, store.meta["vocabulary"], store.num_prompts, store.feature_dim) == (kind, "nuscenes", P, D)
    np.testing.assert_allclose(store.text_embeddings(), _unit(text[:P]), rtol=1e-6)
    assert sorted(p.stem for p in (dst / "images").iterdir()) == sorted(samples)
    ref = open_reference(kind, src_root, num_prompts=P)
    for token in samples:
        a, b = ref.load(token), store.load(token)
        np.testing.assert_array_equal(a.mask_ids, b.mask_ids)
        np.testing.assert_array_equal(a.prompt_ids, b.prompt_ids)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_allclose(a.features, b.features, atol=1e-3)  # stored fp16

    # An explicit token list, including an unknown token, converts only those; re-running is fine.
    assert import_reference(kind, src_root, dst, tokens=["cam1", "nope"]) == [
        ("nope", f"missing file {src_root / 'nope.png'}")]


def test_import_reference_refuses_a_mismatched_vocabulary(tmp_path):
    rng = np.random.default_rng(9)
    _write("catseg", tmp_path / "src", "t", Sample("catseg", rng), _text_rows("catseg", rng))
    with pytest.raises(DataError, match="175 text embeddings, expected 80"):
        import_reference("catseg", tmp_path / "src", tmp_path / "dst", vocabulary="semantickitti")
    import_reference("catseg", tmp_path / "src", tmp_path / "dst")
    with pytest.raises(DataError, match="use another output directory"):
        import_reference("fcclip", tmp_path / "src", tmp_path / "dst")
