"""Run the released CAT-Seg / SAN / FC-CLIP models and write their outputs straight into the ssov format.

The reference method runs each model from its fork in ``sbysbysbys/UOV`` (``ov_segment/CAT-Seg``,
``ov_segment/SAN``, ``ov_segment/fc-clip``; detectron2 v0.6, PyTorch 1.11 / CUDA 11.3) and writes PNG + JSON + .pt
files (read by :mod:`.reference`).  These adapters load the same models from such a checkout and convert each
image's raw outputs in memory, the way those scripts do, plus a confidence per mask (the scripts drop it):

==========  ===========================================================  =========================================
teacher     model output used (UOV fork)                                 masks / features
==========  ===========================================================  =========================================
catseg      ``sem_seg`` (P, H, W) sigmoid maps, ``image_embed`` (D, H, W),  one mask per predicted prompt (argmax);
            ``text_embed`` (P, D)                                           L2-normalised sum of pixel embeddings
san         ``sem_seg`` (P', H, W), ``image_emb`` (P', D), ``text_emb``     one mask per predicted prompt (prompts
                                                                           beyond the vocabulary: no mask); the
                                                                           predicted class's embedding
fcclip      ``panoptic_seg`` = (ids (H, W), segments_info, in_vocab,        panoptic segments (things = instances);
            out_vocab (K+1, D)), ``text_embedding`` (P+1, D)                ``fcclip_features`` picks the vector
==========  ===========================================================  =========================================

They need the upstream code, detectron2, the released weights and a GPU, none of which exist on a CI machine;
the conversion functions below are exercised by the tests with small random outputs, and a missing checkpoint
or package is one clear error naming what is expected where.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..config import from_dict
from ..data.frame import CameraView, Frame
from ..errors import ConfigError, DataError
from ..vocab import ClassDictionary
from .format import TeacherImage
from .reference import FCCLIP_FEATURES, _normalise

# Per upstream teacher: the reference's config file (relative to the model's directory in the UOV checkout),
# released checkpoint file name and where it is published.
UPSTREAM = {
    "catseg": {"config_file": "configs/nuscenes.yaml", "checkpoint": "model_final_large.pth",
               "source": "CAT-Seg large (ViT-L/14@336 + Swin-B), github.com/KU-CVLAB/CAT-Seg release"},
    "san": {"config_file": "configs/san_clip_vit_large_res4_coco.yaml", "checkpoint": "san_vit_large_14.pth",
            "source": "SAN ViT-L/14, huggingface.co/Mendel192/san"},
    "fcclip": {"config_file": "configs/coco/panoptic-segmentation/fcclip/fcclip_convnext_large_eval_nuscenes.yaml",
               "checkpoint": "fcclip_cocopan.pth", "source": "FC-CLIP ConvNeXt-L COCO panoptic, github.com/bytedance/fc-clip"},
}
SAN_SHORT_SIDE = 640  # the reference SAN script resizes the short side to 640


@dataclass
class UpstreamConfig:
    """Where a released model lives: the model's directory in a UOV checkout (or the upstream repository)."""

    repo: Path  # e.g. UOV/ov_segment/CAT-Seg
    checkpoint: Optional[Path] = None  # default: <repo>/<released file name>
    config_file: Optional[Path] = None  # default: the reference config inside repo
    device: str = "auto"  # auto: cuda:<LOCAL_RANK>
    opts: list[str] = field(default_factory=list)  # extra detectron2 config KEY VALUE pairs

    def paths(self, kind: str) -> tuple[Path, Path]:
        """(checkpoint, config file) with the defaults filled in."""
        info = UPSTREAM[kind]
        ckpt = Path(self.checkpoint) if self.checkpoint is not None else Path(self.repo) / info["checkpoint"]
        cfg = Path(self.config_file) if self.config_file is not None else Path(self.repo) / info["config_file"]
        return ckpt, cfg


# ---- conversions of one image's raw outputs (pure numpy; what the upstream scripts compute) ---------------

def class_regions(sem_seg: np.ndarray, num_prompts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel argmax of (P', H, W) class maps -> (mask_ids (H, W), prompt_ids (K,), scores (K,)).

    One mask per predicted prompt, numbered in prompt order (as CAT-Seg / SAN write them); pixels whose best
    class lies beyond the vocabulary (SAN's vocabulary augmentation) get no mask.  A mask's score is the mean of
    its prompt's map over the mask, clipped to [0, 1].
    """
    sem_seg = np.asarray(sem_seg, dtype=np.float32)
    if sem_seg.ndim != 3 or sem_seg.shape[0] < num_prompts:
        raise DataError(f"class maps must be (P >= {num_prompts}, H, W), got {sem_seg.shape}")
    best = sem_seg.argmax(0)
    best_value = np.take_along_axis(sem_seg, best[None], 0)[0]
    best = np.where(best < num_prompts, best, -1)
    prompts = np.unique(best[best >= 0])
    lut = np.zeros(num_prompts + 1, np.int64)  # index 0 = beyond the vocabulary (-1 + 1)
    lut[prompts + 1] = np.arange(1, len(prompts) + 1)
    mask_ids = lut[best + 1]
    k = len(prompts)
    area = np.bincount(mask_ids.ravel(), minlength=k + 1)[1:]
    total = np.bincount(mask_ids.ravel(), weights=best_value.ravel().astype(np.float64), minlength=k + 1)[1:]
    scores = np.clip(total / np.maximum(area, 1), 0.0, 1.0).astype(np.float32)
    return mask_ids, prompts.astype(np.int32), scores


def pooled_features(mask_ids: np.ndarray, pixel_embed: np.ndarray, num_masks: int) -> np.ndarray:
    """(K, D) L2-normalised sums of a (D, H, W) pixel embedding over each mask (CAT-Seg's mask feature)."""
    d = pixel_embed.shape[0]
    if pixel_embed.ndim != 3 or pixel_embed.shape[1:] != mask_ids.shape:
        raise DataError(f"pixel embedding must be (D, {mask_ids.shape[0]}, {mask_ids.shape[1]}), got {pixel_embed.shape}")
    flat = pixel_embed.reshape(d, -1).T.astype(np.float64)
    sums = np.zeros((num_masks + 1, d))
    np.add.at(sums, mask_ids.ravel(), flat)
    return _normalise(sums[1:])


def text_table(text: np.ndarray, num_prompts: int, void_row: bool, what: str) -> np.ndarray:
    """(P, D) L2-normalised text embeddings; FC-CLIP's trailing void row is dropped, any other count refused."""
    text = np.asarray(text, dtype=np.float32)
    if void_row and text.ndim == 2 and text.shape[0] == num_prompts + 1:
        text = text[:-1]
    if text.ndim != 2 or text.shape[0] != num_prompts:
        raise DataError(f"{what}: {getattr(text, 'shape', None)} text embeddings, expected {num_prompts} rows"
                        + (" (+1 void row)" if void_row else ""))
    return _normalise(text)


def convert_catseg(out: dict, num_prompts: int) -> TeacherImage:
    mask_ids, prompts, scores = class_regions(_np(out["sem_seg"]), num_prompts)
    features = pooled_features(mask_ids, _np(out["image_embed"]), len(prompts))
    return TeacherImage(mask_ids=mask_ids, prompt_ids=prompts, scores=scores, features=features)


def convert_san(out: dict, num_prompts: int) -> TeacherImage:
    mask_ids, prompts, scores = class_regions(_np(out["sem_seg"]), num_prompts)
    class_embed = _np(out["image_emb"])
    if class_embed.ndim != 2 or class_embed.shape[0] < num_prompts:
        raise DataError(f"SAN image_emb must be (P >= {num_prompts}, D), got {class_embed.shape}")
    return TeacherImage(mask_ids=mask_ids, prompt_ids=prompts, scores=scores,
                        features=_normalise(class_embed[prompts]))


def convert_fcclip(out: dict, num_prompts: int, fcclip_features: str = "out_vocab") -> TeacherImage:
    seg, segments, *vectors = out["panoptic_seg"]
    seg = _np(seg).astype(np.int64)
    if len(vectors) != 2:
        raise DataError("FC-CLIP panoptic_seg must be (ids, segments_info, in_vocab, out_vocab) "
                        "(the UOV fork's fcclip.py); this model returns no mask features")
    k = len(segments)
    ids = [int(s["id"]) for s in segments]
    if ids != list(range(1, k + 1)):
        raise DataError(f"FC-CLIP segment ids must be 1..K in order, got {ids[:8]}")
    if seg.size and (seg.min() < 0 or seg.max() > k):
        raise DataError(f"FC-CLIP panoptic ids outside 0..{k}")
    feats = _np(vectors[FCCLIP_FEATURES.index(fcclip_features)])
    if feats.ndim != 2 or feats.shape[0] != k + 1:
        raise DataError(f"FC-CLIP {fcclip_features} features must be (K+1 = {k + 1}, D), got {feats.shape}")
    prompts = np.array([int(s["category_id"]) for s in segments], np.int32)
    scores = np.array([float(s.get("score", 1.0)) for s in segments], np.float32)
    return TeacherImage(mask_ids=seg, prompt_ids=prompts, scores=np.clip(scores, 0, 1),
                        features=_normalise(feats[1:]))


CONVERTERS: dict[str, Callable[..., TeacherImage]] = {"catseg": convert_catseg, "san": convert_san,
                                                       "fcclip": convert_fcclip}
TEXT_KEYS = {"catseg": "text_embed", "san": "text_emb", "fcclip": "text_embedding"}


def _np(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


# ---- loading the released models (GPU machines with the upstream code) -------------------------------------

def load_upstream_model(kind: str, cfg: UpstreamConfig, dictionary: ClassDictionary) -> Callable[[np.ndarray], dict]:
    """The released model of ``kind`` as a function RGB uint8 (H, W, 3) -> its raw output dict.

    Checks, in order: the checkpoint file (one error naming the expected path), the code directory, detectron2
    and the upstream package; then builds the model with detectron2 exactly as the reference scripts do.
    """
    ckpt, config_file = cfg.paths(kind)
    if not ckpt.is_file():
        raise DataError(f"{kind} checkpoint not found at {ckpt} (expected the released {UPSTREAM[kind]['checkpoint']}: "
                        f"{UPSTREAM[kind]['source']}); set teacher.upstream.checkpoint")
    if not config_file.is_file():
        raise DataError(f"{kind} config file not found at {config_file}; set teacher.upstream.repo to the model's "
                        "directory of a UOV checkout (ov_segment/CAT-Seg, ov_segment/SAN, ov_segment/fc-clip) "
                        "or teacher.upstream.config_file")
    repo = Path(cfg.repo).resolve()
    for path in (repo, repo / "demo"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    try:
        import torch
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.config import get_cfg
        from detectron2.modeling import build_model
        from detectron2.projects.deeplab import add_deeplab_config
    except ImportError as e:
        raise ConfigError(f"the {kind} teacher needs detectron2 v0.6 and the upstream code ({e}); see the README, "
                          "'Teachers and open-vocabulary queries'") from None
    from .openclip import resolve_device

    d2 = get_cfg()
    add_deeplab_config(d2)
    try:
        if kind == "catseg":
            from cat_seg import add_cat_seg_config

            add_cat_seg_config(d2)
        elif kind == "san":
            from san import add_san_config

            add_san_config(d2)
        else:
            from fcclip import add_fcclip_config, add_maskformer2_config

            add_maskformer2_config(d2)
            add_fcclip_config(d2)
    except ImportError as e:
        raise ConfigError(f"the {kind} package is not importable from {repo} ({e})") from None
    d2.merge_from_file(str(config_file))
    opts = list(cfg.opts) + ["MODEL.WEIGHTS", str(ckpt), "MODEL.DEVICE", resolve_device(cfg.device)]
    if kind == "catseg":  # CAT-Seg reads its test vocabulary from a JSON list: the dictionary's prompts
        vocab_json = Path(tempfile.mkdtemp(prefix="ssov_catseg_")) / "vocabulary.json"
        vocab_json.write_text(json.dumps(dictionary.prompts))
        opts += ["MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON", str(vocab_json)]
    d2.merge_from_list(opts)
    d2.freeze()
    model = build_model(d2).eval()
    DetectionCheckpointer(model).load(str(ckpt))

    def run(image_rgb: np.ndarray) -> dict:
        h, w = image_rgb.shape[:2]
        if kind == "san":  # RGB float, short side 640, with the vocabulary as input
            from PIL import Image

            scale = SAN_SHORT_SIDE / min(h, w)
            resized = np.asarray(Image.fromarray(image_rgb).resize((round(w * scale), round(h * scale))))
            inputs = {"image": torch.from_numpy(resized.copy()).float().permute(2, 0, 1), "height": h, "width": w,
                      "vocabulary": list(dictionary.prompts)}
        else:  # detectron2 BGR input at full resolution (MIN_SIZE_TEST 0 in the reference configs)
            image = image_rgb[:, :, ::-1] if d2.INPUT.FORMAT == "BGR" else image_rgb
            inputs = {"image": torch.from_numpy(image.copy()).permute(2, 0, 1).float(), "height": h, "width": w}
        with torch.no_grad():
            return model([inputs])[0]

    return run


class UpstreamTeacher:
    """A released CAT-Seg / SAN / FC-CLIP model as a ssov :class:`~ssov_train.teachers.runner.Teacher`.

    ``model`` (RGB uint8 image -> raw output dict) defaults to :func:`load_upstream_model`; tests pass a small
    random stand-in.  The text embeddings come with every output, so one forward pass on a grey image at
    construction gives them (and the feature dimension) before the first real image.
    """

    def __init__(self, kind: str, dictionary: ClassDictionary, cfg: Optional[UpstreamConfig] = None,
                 model: Optional[Callable[[np.ndarray], dict]] = None, fcclip_features: str = "out_vocab",
                 probe_size: tuple[int, int] = (900, 1600)):
        if kind not in CONVERTERS:
            raise ConfigError(f"unknown upstream teacher {kind!r}; valid: {sorted(CONVERTERS)}")
        if fcclip_features not in FCCLIP_FEATURES:
            raise ConfigError(f"fcclip_features must be one of {list(FCCLIP_FEATURES)}, got {fcclip_features!r}")
        if model is None:
            if cfg is None:
                raise ConfigError(f"teacher.upstream is not set: the {kind} teacher needs repo / checkpoint")
            model = load_upstream_model(kind, cfg, dictionary)
        self.kind = kind
        self.model = model
        self.fcclip_features = fcclip_features
        # Same names as the imported reference outputs, so both routes give interchangeable stores.
        self.name = "fcclip-in_vocab" if kind == "fcclip" and fcclip_features == "in_vocab" else kind
        self.num_prompts = dictionary.num_prompts
        probe = self.model(np.full((*probe_size, 3), 128, np.uint8))
        self._text = text_table(_np(probe[TEXT_KEYS[kind]]), self.num_prompts, kind == "fcclip", f"{kind} model")
        self.feature_dim = int(self._text.shape[1])

    def text_embeddings(self) -> np.ndarray:
        return self._text.copy()

    def predict(self, camera: CameraView, frame: Optional[Frame] = None) -> TeacherImage:
        out = self.model(camera.load_image())
        opts = {"fcclip_features": self.fcclip_features} if self.kind == "fcclip" else {}
        image = CONVERTERS[self.kind](out, self.num_prompts, **opts)
        if image.features is not None and image.features.shape[1] != self.feature_dim:
            raise DataError(f"{self.kind}: mask features have dim {image.features.shape[1]}, text {self.feature_dim}")
        return image


def build_model_teacher(cfg: Any, dictionary: ClassDictionary):
    """The model teacher a ``TeacherConfig`` names (``builtin``: openclip | catseg | san | fcclip)."""
    if cfg.builtin == "openclip":
        if cfg.upstream or cfg.oracle:
            raise ConfigError("teacher.builtin is 'openclip': set teacher.openclip, not teacher.upstream / oracle")
        from .openclip import OpenClipConfig, OpenClipTeacher

        return OpenClipTeacher(dictionary, from_dict(OpenClipConfig, cfg.openclip, "teacher.openclip"))
    if cfg.openclip or cfg.oracle:
        raise ConfigError(f"teacher.builtin is {cfg.builtin!r}: set teacher.upstream, not teacher.openclip / oracle")
    if not cfg.upstream:
        raise ConfigError(f"teacher.upstream is not set: the {cfg.builtin} teacher needs at least repo "
                          f"(its directory in a UOV checkout) and the released {UPSTREAM[cfg.builtin]['checkpoint']}")
    return UpstreamTeacher(cfg.builtin, dictionary, from_dict(UpstreamConfig, cfg.upstream, "teacher.upstream"),
                           fcclip_features=cfg.fcclip_features)
