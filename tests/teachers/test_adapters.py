"""CAT-Seg / SAN / FC-CLIP adapters: raw model outputs -> ssov format, the same as the upstream scripts' files
imported by the reference readers; missing weights or packages are one clear error.

The released models need detectron2, their code, weights and a GPU: a small random stand-in returns outputs of
the upstream shapes, so the conversion is tested for real and the model loading up to its first requirement.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssov_train.config import from_dict
from ssov_train.data.frame import CameraView
from ssov_train.errors import ConfigError, DataError
from ssov_train.pipeline import TeacherConfig, build_builtin_teacher
from ssov_train.teachers.adapters import (UpstreamConfig, UpstreamTeacher, class_regions, load_upstream_model)
from ssov_train.teachers.reference import open_reference
from ssov_train.vocab import load_dictionary

from test_reference import write_reference_fixture

P, D, H, W = 175, 12, 18, 32
VOCAB = load_dictionary("nuscenes")


class RandomUpstreamModel:
    """Outputs shaped like the UOV forks' models, from a seeded generator (one per image call)."""

    def __init__(self, kind: str, seed: int = 0, extra_classes: int = 0):
        self.kind, self.rng, self.extra = kind, np.random.default_rng(seed), extra_classes
        self.text = self.rng.normal(size=(P + (kind == "fcclip"), D)).astype(np.float32)
        self.last: dict = {}

    def __call__(self, image: np.ndarray) -> dict:
        h, w = image.shape[:2]
        rng = self.rng
        if self.kind == "catseg":
            # A few prompts dominate in blocks, as real class maps do.
            logits = rng.normal(size=(P, h, w)).astype(np.float32)
            for p, (r, c) in zip((0, 96, 165, 170), ((0, 0), (0, 1), (1, 0), (1, 1))):
                logits[p, r * h // 2:(r + 1) * h // 2, c * w // 2:(c + 1) * w // 2] += 6
            out = {"sem_seg": torch.sigmoid(torch.from_numpy(logits)),
                   "image_embed": torch.from_numpy(rng.normal(size=(D, h, w)).astype(np.float32)),
                   "text_embed": torch.from_numpy(self.text)}
        elif self.kind == "san":
            maps = rng.random(size=(P + self.extra, h, w)).astype(np.float32)
            maps[P:, : h // 3] += 2  # vocabulary-augmentation classes win the top third: no mask there
            out = {"sem_seg": torch.from_numpy(maps),
                   "image_emb": torch.from_numpy(rng.normal(size=(P + self.extra, D)).astype(np.float32)),
                   "text_emb": torch.from_numpy(self.text)}
        else:
            seg = np.zeros((h, w), np.int64)
            seg[: h // 2, : w // 2], seg[h // 2:, :], seg[: h // 2, w // 2: 3 * w // 4] = 1, 2, 3
            segments = [{"id": 1, "isthing": True, "category_id": 0, "score": 0.9},
                        {"id": 2, "isthing": False, "category_id": 96, "score": 0.7},
                        {"id": 3, "isthing": True, "category_id": 0, "score": 0.4}]
            fin, fout = (torch.from_numpy(rng.normal(size=(4, D)).astype(np.float32)) for _ in range(2))
            out = {"panoptic_seg": (torch.from_numpy(seg), segments, fin, fout),
                   "text_embedding": torch.from_numpy(self.text)}
        self.last = out
        return out


def camera(tmp_path: Path, token: str = "cam0") -> CameraView:
    path = tmp_path / f"{token}.png"
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(path)
    return CameraView(name="CAM_FRONT", token=token, width=W, height=H, intrinsics=np.eye(3),
                      lidar_to_camera=np.eye(4), image_path=path)


def upstream_files(kind: str, out: dict, root: Path, token: str, fcclip_features: str = "out_vocab") -> None:
    """What the UOV superpixel_generation scripts write for this output (their steps, re-done plainly)."""
    if kind == "fcclip":
        seg, segments, fin, fout = out["panoptic_seg"]
        write_reference_fixture(kind, root, token, seg.numpy(), [s["category_id"] for s in segments],
                                (fin.numpy()[1:], fout.numpy()[1:]), out["text_embedding"].numpy())
        return
    best = out["sem_seg"].argmax(0).numpy()
    best[best >= P] = -1
    prompts = [int(p) for p in np.unique(best) if p >= 0]
    mask_ids = np.zeros_like(best)
    feats = []
    for i, p in enumerate(prompts):
        mask_ids[best == p] = i + 1
        if kind == "catseg":
            f = out["image_embed"].numpy()[:, best == p].sum(1)
            feats.append(f / np.linalg.norm(f))
        else:
            feats.append(out["image_emb"].numpy()[p])
    text = out["text_embed" if kind == "catseg" else "text_emb"].numpy()
    write_reference_fixture(kind, root, token, mask_ids, prompts, np.array(feats), text)


@pytest.mark.parametrize("kind", ["catseg", "san", "fcclip"])
def test_adapter_output_equals_the_imported_upstream_files(tmp_path, kind):
    model = RandomUpstreamModel(kind, extra_classes=5 if kind == "san" else 0)
    teacher = UpstreamTeacher(kind, VOCAB, model=model, probe_size=(H, W))
    assert teacher.name == kind and teacher.num_prompts == P and teacher.feature_dim == D
    direct = teacher.predict(camera(tmp_path))
    upstream_files(kind, model.last, tmp_path / "ref", "cam0")
    imported = open_reference(kind, tmp_path / "ref", num_prompts=P)
    ref = imported.load("cam0")
    np.testing.assert_array_equal(direct.mask_ids, ref.mask_ids)
    np.testing.assert_array_equal(direct.prompt_ids, ref.prompt_ids)
    np.testing.assert_allclose(direct.features, ref.features, atol=1e-5)
    np.testing.assert_allclose(teacher.text_embeddings(), imported.text_embeddings(), atol=1e-6)
    assert ((direct.scores > 0) & (direct.scores <= 1)).all()
    if kind == "san":
        assert (direct.mask_ids[: H // 3] == 0).all()  # augmentation classes -> no mask
    if kind == "fcclip":
        np.testing.assert_allclose(direct.scores, [0.9, 0.7, 0.4])
        assert direct.prompt_ids.tolist() == [0, 96, 0]  # two car instances, one road region


def test_class_region_scores_are_the_mean_winning_map():
    sem = np.zeros((3, 2, 2), np.float32)
    sem[0] = [[0.9, 0.7], [0.1, 0.1]]
    sem[2] = [[0.0, 0.0], [0.6, 0.8]]
    mask_ids, prompts, scores = class_regions(sem, num_prompts=3)
    assert prompts.tolist() == [0, 2] and mask_ids.tolist() == [[1, 1], [2, 2]]
    np.testing.assert_allclose(scores, [0.8, 0.7])


def test_fcclip_in_vocab_features_and_bad_outputs(tmp_path):
    model = RandomUpstreamModel("fcclip")
    teacher = UpstreamTeacher("fcclip", VOCAB, model=model, fcclip_features="in_vocab", probe_size=(H, W))
    assert teacher.name == "fcclip-in_vocab"
    out = teacher.predict(camera(tmp_path))
    fin = model.last["panoptic_seg"][2].numpy()[1:]
    np.testing.assert_allclose(out.features, fin / np.linalg.norm(fin, axis=1, keepdims=True), atol=1e-6)

    def no_features(image):
        o = RandomUpstreamModel("fcclip")(image)
        o["panoptic_seg"] = o["panoptic_seg"][:2]  # a stock FC-CLIP: no mask features
        return o

    stock = UpstreamTeacher("fcclip", VOCAB, model=lambda im: RandomUpstreamModel("fcclip")(im), probe_size=(H, W))
    stock.model = no_features
    with pytest.raises(DataError, match="UOV fork"):
        stock.predict(camera(tmp_path))

    def wrong_text(image):
        o = RandomUpstreamModel("catseg")(image)
        o["text_embed"] = o["text_embed"][:100]
        return o

    with pytest.raises(DataError, match="expected 175 rows"):
        UpstreamTeacher("catseg", VOCAB, model=wrong_text, probe_size=(H, W))


def test_missing_checkpoint_config_or_detectron2_are_one_clear_error(tmp_path):
    repo = tmp_path / "UOV" / "ov_segment" / "CAT-Seg"
    with pytest.raises(DataError, match=f"catseg checkpoint not found at {repo / 'model_final_large.pth'}"):
        load_upstream_model("catseg", UpstreamConfig(repo=repo), VOCAB)
    (repo / "configs").mkdir(parents=True)
    (repo / "model_final_large.pth").write_bytes(b"weights")
    with pytest.raises(DataError, match="config file not found at .*configs/nuscenes.yaml"):
        load_upstream_model("catseg", UpstreamConfig(repo=repo), VOCAB)
    (repo / "configs" / "nuscenes.yaml").write_text("MODEL: {}\n")
    try:
        import detectron2  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="needs detectron2"):
            load_upstream_model("catseg", UpstreamConfig(repo=repo), VOCAB)
    san = UpstreamConfig(repo=tmp_path / "SAN", checkpoint=tmp_path / "elsewhere" / "san.pth")
    with pytest.raises(DataError, match=f"san checkpoint not found at {tmp_path / 'elsewhere' / 'san.pth'}"):
        load_upstream_model("san", san, VOCAB)


def test_teacher_config_routes_and_validates(tmp_path):
    def cfg(**data) -> TeacherConfig:
        return from_dict(TeacherConfig, {"format": "ssov", "root": str(tmp_path / "t"), **data})

    with pytest.raises(ConfigError, match="teacher.upstream is not set"):
        build_builtin_teacher(cfg(builtin="fcclip"), VOCAB)
    with pytest.raises(ConfigError, match="set teacher.upstream, not teacher.openclip"):
        build_builtin_teacher(cfg(builtin="san", openclip={"model": "x"}), VOCAB)
    with pytest.raises(DataError, match="fcclip checkpoint not found at .*fcclip_cocopan.pth"):
        build_builtin_teacher(cfg(builtin="fcclip", upstream={"repo": str(tmp_path / "fc-clip")}), VOCAB)
    with pytest.raises(ConfigError, match="teacher.upstream: rep: unknown key .did you mean .repo"):
        build_builtin_teacher(cfg(builtin="catseg", upstream={"rep": "x"}), VOCAB)
    with pytest.raises(ConfigError, match="checkpoint is not set"):
        build_builtin_teacher(cfg(builtin="openclip", openclip={"model": "ViT-B-16"}), VOCAB)
