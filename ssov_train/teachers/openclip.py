"""The built-in open-vocabulary teacher: dense CLIP features from any local open_clip ViT checkpoint.

Per camera image (MaskCLIP-style, Zhou et al. 2022):

1. the image is resized so its short side is ``input_short_side`` (both sides multiples of the patch size; the
   positional embeddings are interpolated to the patch grid), normalised with the model's mean / std;
2. dense patch features come from the vision transformer with the **value-embedding trick**: the last block's
   attention is replaced by its value projection (+ output projection), so each patch token keeps its own
   content instead of being pooled towards the class token; then the last MLP, ``ln_post`` and ``proj`` map the
   tokens into the joint image-text space;
3. features are L2-normalised, upsampled bilinearly to the mask map (the image divided by ``mask_stride``) and
   compared with the vocabulary's text embeddings (every prompt in every template, averaged, L2-normalised);
4. per pixel the best prompt wins; **masks are the connected regions of each predicted prompt** (regions smaller
   than ``min_mask_area`` of the map get no mask), scored by the mean softmax probability of their prompt
   (temperature = the model's logit scale) and described by the L2-normalised sum of their pixel features
   (as CAT-Seg does), in the same space as the text embeddings.

No CLIP weights ship with ssov: ``checkpoint`` is a local file (``.pt`` / ``.bin`` / ``.safetensors``, as
``open_clip.create_model(name, pretrained=path)`` reads it) or an open_clip model directory
(``open_clip_config.json`` + weights).  ``random_init: true`` builds untrained weights, which exercise every
code path and format but segment nothing meaningful: for tests and pipeline checks only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from scipy import ndimage

from ..data.frame import CameraView, Frame
from ..errors import ConfigError, DataError
from ..vocab import ClassDictionary
from .format import TeacherImage

log = logging.getLogger(__name__)

# A short prompt ensemble (CAT-Seg / OpenScene use longer ImageNet-style lists; any list works).
DEFAULT_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "a cropped photo of a {}.", "a photo of a {} in a street scene.",
                     "there is a {} in the scene.", "a blurry photo of a {}.", "a photo of a large {}.",
                     "a photo of a small {}.")
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass
class OpenClipConfig:
    model: str = "ViT-B-16"  # open_clip architecture name (`open_clip.list_models()`)
    checkpoint: Optional[Path] = None  # local weights file or open_clip model directory
    random_init: bool = False  # untrained weights (tests only); then `seed` fixes them
    seed: int = 0
    model_config: dict[str, Any] = field(default_factory=dict)  # custom open_clip model_cfg, registered as `model`
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    input_short_side: int = 448  # pixels; the ViT sees the whole image at this scale
    mask_stride: int = 4  # mask map resolution = image / stride (superpoints scale pixel lookups)
    min_mask_area: float = 0.0005  # fraction of the map below which a connected region gets no mask
    store_dense_features: bool = False  # also write the (h, w, D) patch features (per-pixel fusion)
    device: str = "auto"  # auto: cuda:<LOCAL_RANK> when CUDA is available, else cpu
    batch_size: int = 6  # images per forward pass
    text_batch_size: int = 256

    def check(self) -> None:
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ValueError("templates must be a non-empty list of strings containing '{}'")
        if self.input_short_side < 16 or self.mask_stride < 1 or self.batch_size < 1 or self.text_batch_size < 1:
            raise ValueError("input_short_side >= 16, mask_stride >= 1, batch_size >= 1, text_batch_size >= 1")
        if not 0 <= self.min_mask_area < 1:
            raise ValueError(f"min_mask_area must be in [0, 1), got {self.min_mask_area}")
        if self.checkpoint is None and not self.random_init:
            raise ValueError("checkpoint is not set: point it at a local open_clip checkpoint (weights file or "
                             "model directory); random_init: true builds untrained weights for pipeline tests only")
        if self.checkpoint is not None and self.random_init:
            raise ValueError("set either checkpoint or random_init, not both")


def resolve_device(device: str) -> str:
    """``auto`` -> this process's GPU (``cuda:<LOCAL_RANK>``, set by torchrun) when CUDA is available, else cpu
    (:func:`ssov_train.device.resolve_device`; a teacher needs torch's CUDA, not spconv's)."""
    from ..device import resolve_device as resolve

    return resolve(device, needs_spconv=False, one_gpu_per_process=False).device


class OpenClipModel:
    """An open_clip model loaded from local weights, with dense (per-patch) image features and text embeddings."""

    def __init__(self, cfg: OpenClipConfig):
        from . import _torchvision_shim  # noqa: F401  (before open_clip imports torchvision)
        import open_clip
        import torch

        self.cfg = cfg
        if cfg.model_config:
            from open_clip import factory

            factory._MODEL_CONFIGS[cfg.model] = dict(cfg.model_config)  # open_clip's registry of architectures
        elif cfg.model not in open_clip.list_models():
            raise ConfigError(f"unknown open_clip model {cfg.model!r}; known: {', '.join(open_clip.list_models()[:12])}, ... "
                              "(or give teacher.openclip.model_config)")
        self.device = torch.device(resolve_device(cfg.device))
        name, pretrained = cfg.model, None
        if cfg.checkpoint is not None:
            path = Path(cfg.checkpoint)
            if not path.exists():
                raise DataError(f"open_clip checkpoint not found: {path} (expected a local weights file for "
                                f"{cfg.model}: .pt / .bin / .safetensors, or an open_clip model directory with "
                                "open_clip_config.json); ssov downloads no weights")
            if path.is_dir():
                name = f"local-dir:{path}"
            else:
                pretrained = str(path)
        try:
            with torch.random.fork_rng(devices=[]):  # random_init: the same untrained weights every run,
                torch.manual_seed(cfg.seed)          # without touching the caller's random state
                model = open_clip.create_model(name, pretrained=pretrained, device=self.device, weights_only=True)
        except (RuntimeError, ValueError, KeyError, OSError) as e:
            raise DataError(f"open_clip model {cfg.model} could not be built from {cfg.checkpoint}: {e}") from None
        self.model = model.eval()
        if cfg.checkpoint is None:
            log.warning("open_clip %s: untrained random weights (random_init): the outputs mean nothing", cfg.model)
        self.tokenizer = open_clip.get_tokenizer(name)
        self.weights = "random" if cfg.checkpoint is None else Path(cfg.checkpoint).name
        visual = model.visual
        if not isinstance(visual, open_clip.transformer.VisionTransformer) or visual.attn_pool is not None \
                or not isinstance(visual.transformer.resblocks[-1], open_clip.transformer.ResidualAttentionBlock):
            raise ConfigError(f"open_clip model {cfg.model}: dense features need a plain ViT image tower "
                              f"(ViT-B-16, ViT-L-14, ...), got {type(visual).__name__}")
        self.visual = visual
        pre = getattr(visual, "preprocess_cfg", {}) or {}
        self.mean = torch.tensor(pre.get("mean", open_clip.OPENAI_DATASET_MEAN), device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.get("std", open_clip.OPENAI_DATASET_STD), device=self.device).view(1, 3, 1, 1)
        self.patch = int(visual.patch_size[0])
        self.logit_scale = float(model.logit_scale.exp().item())
        with torch.no_grad():
            self.embed_dim = int(self.encode_text(["x"], templates=("{}",)).shape[1])

    # ---- text -------------------------------------------------------------------------------------
    def encode_text(self, texts: Sequence[str], templates: Optional[Sequence[str]] = None) -> np.ndarray:
        """(len(texts), D) float32, L2-normalised: each text in every template, embeddings averaged, renormalised."""
        import torch
        import torch.nn.functional as F

        templates = list(templates or self.cfg.templates)
        sentences = [t.format(text.strip()) for text in texts for t in templates]
        out = []
        with torch.no_grad():
            for i in range(0, len(sentences), self.cfg.text_batch_size):
                tokens = self.tokenizer(sentences[i:i + self.cfg.text_batch_size]).to(self.device)
                out.append(F.normalize(self._encode_tokens(tokens).float(), dim=-1))
        emb = torch.cat(out).view(len(texts), len(templates), -1).mean(1)
        return F.normalize(emb, dim=-1).cpu().numpy().astype(np.float32)

    def _encode_tokens(self, tokens):
        """``encode_text`` without the padding: the CLIP text tower is causal and pools at the end-of-text
        token, so columns after the longest prompt's end cannot change the result (77 -> ~15 columns, 5x less
        work on CPU).  Other text towers (HF, CoCa, non-causal) take open_clip's own path."""
        import open_clip
        import torch

        m = self.model
        causal = getattr(m, "attn_mask", None)
        if not isinstance(m, open_clip.CLIP) or getattr(m, "text_pool_type", None) != "argmax" or causal is None:
            return m.encode_text(tokens)
        n = int(tokens.argmax(dim=-1).max()) + 1  # the end-of-text token has the highest id
        tokens = tokens[:, :n]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast) + m.positional_embedding[:n].to(cast)
        x = m.ln_final(m.transformer(x, attn_mask=causal[:n, :n]))
        x = x[range(len(tokens)), tokens.argmax(dim=-1)]
        proj = m.text_projection
        return proj(x) if isinstance(proj, torch.nn.Linear) else (x if proj is None else x @ proj)

    # ---- images -----------------------------------------------------------------------------------
    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """Network input (H', W'): short side ``input_short_side``, both multiples of the patch size."""
        scale = self.cfg.input_short_side / min(height, width)
        return (max(self.patch, round(height * scale / self.patch) * self.patch),
                max(self.patch, round(width * scale / self.patch) * self.patch))

    def dense_features(self, images: np.ndarray):
        """(B, D, gh, gw) L2-normalised patch features (torch, on the model's device) of (B, H, W, 3) uint8 images."""
        import torch
        import torch.nn.functional as F

        v = self.visual
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        size = self.input_size(*images.shape[1:3])
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        with torch.no_grad():
            x = v.conv1(x.to(v.conv1.weight.dtype))
            b, width, gh, gw = x.shape
            x = x.flatten(2).transpose(1, 2)
            cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(b, 1, -1)
            x = torch.cat([cls, x], dim=1) + self._positional_embedding(gh, gw).to(x.dtype)
            x = v.ln_pre(x)
            blocks = v.transformer.resblocks
            batch_first = getattr(v.transformer, "batch_first", True)
            x = x if batch_first else x.transpose(0, 1)
            for block in blocks[:-1]:
                x = block(x)
            x = x if batch_first else x.transpose(0, 1)
            last = blocks[-1]
            # Value-embedding trick: value projection + output projection, no query-key mixing.
            w_v = last.attn.in_proj_weight[2 * width:]
            b_v = last.attn.in_proj_bias[2 * width:] if last.attn.in_proj_bias is not None else None
            x = x + last.ls_1(last.attn.out_proj(F.linear(last.ln_1(x), w_v, b_v)))
            x = x + last.ls_2(last.mlp(last.ln_2(x)))
            x = v.ln_post(x[:, 1:])
            if v.proj is not None:
                x = x @ v.proj
            x = F.normalize(x.float(), dim=-1)
        return x.transpose(1, 2).reshape(b, -1, gh, gw)

    def _positional_embedding(self, gh: int, gw: int):
        import torch
        import torch.nn.functional as F

        pos = self.visual.positional_embedding
        g0, g1 = self.visual.grid_size
        if (gh, gw) == (g0, g1):
            return pos.unsqueeze(0)
        grid = pos[1:].reshape(1, g0, g1, -1).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        return torch.cat([pos[:1].float(), grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)]).unsqueeze(0)


class OpenClipTeacher:
    """The open_clip teacher (see the module docstring); implements :class:`~ssov_train.teachers.runner.Teacher`
    with ``predict_batch`` so the runner feeds it ``cfg.batch_size`` images per forward pass."""

    def __init__(self, dictionary: ClassDictionary, cfg: OpenClipConfig, model: Optional[OpenClipModel] = None):
        self.cfg = cfg
        self.dictionary = dictionary
        self.clip = model or OpenClipModel(cfg)
        # The weights are part of the name: a store made with other weights is never silently extended.
        self.name = f"openclip-{cfg.model}-{'random' if cfg.checkpoint is None else Path(cfg.checkpoint).stem}"
        self.num_prompts = dictionary.num_prompts
        self.feature_dim = self.clip.embed_dim
        self.batch_size = cfg.batch_size
        self._text = self.clip.encode_text(dictionary.prompts)

    def text_embeddings(self) -> np.ndarray:
        return self._text.copy()

    def predict(self, camera: CameraView, frame: Optional[Frame] = None) -> TeacherImage:
        return self.predict_batch([camera])[0]

    def predict_batch(self, cameras: Sequence[CameraView], frames: Optional[Sequence[Optional[Frame]]] = None
                      ) -> list[TeacherImage]:
        """One output per camera; images of the same size share forward passes."""
        images = [cam.load_image() for cam in cameras]
        out: list[Optional[TeacherImage]] = [None] * len(cameras)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(images):
            by_size.setdefault(img.shape, []).append(i)
        for idx in by_size.values():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                feats = self.clip.dense_features(np.stack([images[i] for i in chunk]))
                for i, f in zip(chunk, feats):
                    out[i] = self._masks(f, images[i].shape[:2])
        return out  # type: ignore[return-value]

    def _masks(self, grid, image_hw: tuple[int, int]) -> TeacherImage:
        """Per-pixel argmax over the prompts -> connected regions -> scores and mask features."""
        import torch
        import torch.nn.functional as F

        s = self.cfg.mask_stride
        h, w = -(-image_hw[0] // s), -(-image_hw[1] // s)
        feats = F.interpolate(grid[None], size=(h, w), mode="bilinear", align_corners=False)[0]  # (D, h, w)
        flat = feats.flatten(1).T  # (h*w, D)
        text = torch.from_numpy(self._text).to(flat.device)
        probs = torch.softmax(self.clip.logit_scale * (flat @ text.T), dim=1)
        best_prob, best = probs.max(1)
        pred = best.view(h, w).cpu().numpy()
        mask_ids = np.zeros((h, w), np.int64)
        prompts: list[int] = []
        min_area = self.cfg.min_mask_area * h * w
        for p in np.unique(pred):  # sorted: mask ids follow prompt order, then scan order
            regions, n = ndimage.label(pred == p, structure=_EIGHT_CONNECTED)
            keep = np.bincount(regions.ravel(), minlength=n + 1) >= max(min_area, 1)
            keep[0] = False
            ids = np.zeros(n + 1, np.int64)  # region -> mask id (0: too small), relabelled in one pass
            ids[keep] = len(prompts) + np.arange(1, int(keep.sum()) + 1)
            mask_ids = np.where(regions > 0, ids[regions], mask_ids)
            prompts += [int(p)] * int(keep.sum())
        k = len(prompts)
        ids = torch.from_numpy(mask_ids.ravel()).to(flat.device)
        sums = torch.zeros(k + 1, flat.shape[1], device=flat.device).index_add_(0, ids, flat)
        features = F.normalize(sums[1:], dim=1).cpu().numpy()
        area = np.bincount(mask_ids.ravel(), minlength=k + 1)[1:]
        prob_sum = np.bincount(mask_ids.ravel(), weights=best_prob.cpu().numpy().astype(np.float64), minlength=k + 1)[1:]
        scores = (prob_sum / np.maximum(area, 1)).astype(np.float32)
        dense = grid.permute(1, 2, 0).cpu().numpy().astype(np.float16) if self.cfg.store_dense_features else None
        return TeacherImage(mask_ids=mask_ids,
                            prompt_ids=np.asarray(prompts, np.int32), scores=scores,
                            features=features.astype(np.float32), dense_features=dense)
