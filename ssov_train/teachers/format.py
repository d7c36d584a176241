"""The ssov teacher-output format (version 1) and the interface every teacher source implements.

On disk, one directory per teacher run::

    <root>/teacher.json              {"format": "ssov-teacher", "version": 1, "teacher": "<name>",
                                      "vocabulary": "<dictionary name>", "num_prompts": P,
                                      "feature_dim": D or null, "created_by": "..."}
    <root>/text_embeddings.npy       (P, D) float32, L2-normalised rows, in the teacher's CLIP space (optional)
    <root>/images/<image_token>.npz  one per camera image:
        mask_ids   (H, W) uint8/16 0 = no mask, 1..K = masks (the map may be lower-resolution than the image;
                                   pixel lookups scale coordinates)
        prompt_ids (K,)   int32    prompt id (index into the vocabulary) of mask k+1
        scores     (K,)   float32  teacher confidence of that prompt for the mask, in [0, 1]
        features   (K, D) float16  optional per-mask feature (L2-normalised), same space as text_embeddings
        dense_features (h, w, D) float16  optional per-pixel features on the teacher's own grid (e.g. ViT patches),
                                   L2-normalised, same space; per-pixel fusion onto points reads them

``image_token`` is :attr:`CameraView.token` (the nuScenes camera sample_data token for nuScenes data), so the
same outputs serve every stage.  Readers for the reference teachers' own layouts (CAT-Seg / SAN / FC-CLIP:
PNG + JSON + .pt per image, ``text_embedding.pt``) present the same :class:`TeacherSource` interface.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

import numpy as np

from ..errors import DataError
from ..io import NPZ_READ_ERRORS, atomic_path, save_npz_atomic, write_json_atomic

FORMAT_NAME = "ssov-teacher"
FORMAT_VERSION = 1
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.+\-]+$")


@dataclass
class TeacherImage:
    """One camera image's teacher output."""

    mask_ids: np.ndarray  # (H, W) uint16, 0 = no mask
    prompt_ids: np.ndarray  # (K,) int32
    scores: np.ndarray  # (K,) float32
    features: Optional[np.ndarray] = None  # (K, D) float32/16
    dense_features: Optional[np.ndarray] = None  # (h, w, D) float16, optional per-pixel features

    @property
    def num_masks(self) -> int:
        return int(self.prompt_ids.shape[0])

    def validate(self, num_prompts: int, feature_dim: Optional[int], where: str) -> None:
        m = self.mask_ids
        if m.ndim != 2 or m.dtype.kind not in "ui":
            raise DataError(f"{where}: mask_ids must be a 2-D integer map, got {m.dtype} {m.shape}")
        k = self.num_masks
        if self.prompt_ids.shape != (k,) or self.scores.shape != (k,):
            raise DataError(f"{where}: prompt_ids/scores must both have shape (K,), "
                            f"got {self.prompt_ids.shape} / {self.scores.shape}")
        if m.size and int(m.max()) > k:
            raise DataError(f"{where}: mask id {int(m.max())} used but only {k} masks are described")
        if k and (self.prompt_ids.min() < 0 or self.prompt_ids.max() >= num_prompts):
            bad = self.prompt_ids[(self.prompt_ids < 0) | (self.prompt_ids >= num_prompts)]
            raise DataError(f"{where}: unknown prompt id(s) {sorted(set(bad.tolist()))[:5]} "
                            f"(vocabulary has {num_prompts} prompts)")
        if not np.isfinite(self.scores).all():
            raise DataError(f"{where}: scores contain NaN/Inf")
        if self.features is not None:
            if self.features.shape[0] != k or (feature_dim is not None and self.features.shape[1] != feature_dim):
                raise DataError(f"{where}: features must be ({k}, {feature_dim}), got {self.features.shape}")
            if not np.isfinite(self.features).all():
                raise DataError(f"{where}: features contain NaN/Inf")
        if self.dense_features is not None:
            d = self.dense_features
            if d.ndim != 3 or (feature_dim is not None and d.shape[2] != feature_dim):
                raise DataError(f"{where}: dense_features must be (h, w, {feature_dim}), got {d.shape}")
            if not np.isfinite(d).all():
                raise DataError(f"{where}: dense_features contain NaN/Inf")


class TeacherSource(Protocol):
    """What the superpoints stage needs from a teacher, whatever its on-disk layout."""

    name: str
    num_prompts: int
    feature_dim: Optional[int]

    def text_embeddings(self) -> Optional[np.ndarray]: ...

    def has(self, image_token: str) -> bool: ...

    def load(self, image_token: str) -> TeacherImage: ...


class TeacherStore:
    """Reader/writer of the ssov teacher-output format (version 1)."""

    def __init__(self, root: str | Path, meta: dict):
        self.root = Path(root)
        self.meta = meta
        self.name = str(meta.get("teacher", "unknown"))
        self.num_prompts = int(meta["num_prompts"])
        fd = meta.get("feature_dim")
        self.feature_dim = int(fd) if fd is not None else None

    # ---- creation / opening ----------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, teacher: str, vocabulary: str, num_prompts: int,
               feature_dim: Optional[int] = None, text_embeddings: Optional[np.ndarray] = None,
               created_by: str = "", exist_ok: bool = True) -> "TeacherStore":
        """Create (or reopen, when compatible) a teacher-output directory."""
        root = Path(root)
        meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "teacher": teacher, "vocabulary": vocabulary,
                "num_prompts": int(num_prompts), "feature_dim": feature_dim, "created_by": created_by}
        if (root / "teacher.json").exists():
            existing = cls.open(root)
            keys = ("teacher", "vocabulary", "num_prompts", "feature_dim")
            if any(existing.meta.get(k) != meta[k] for k in keys) or not exist_ok:
                raise DataError(f"teacher outputs at {root} were made with "
                                f"{ {k: existing.meta.get(k) for k in keys} }, not { {k: meta[k] for k in keys} }; "
                                "use another output directory")
            return existing
        (root / "images").mkdir(parents=True, exist_ok=True)
        if text_embeddings is not None:
            te = np.asarray(text_embeddings, dtype=np.float32)
            if te.shape != (num_prompts, feature_dim):
                raise DataError(f"text embeddings must be ({num_prompts}, {feature_dim}), got {te.shape}")
            with atomic_path(root / "text_embeddings.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, te)
        write_json_atomic(root / "teacher.json", meta)
        return cls(root, meta)

    @classmethod
    def open(cls, root: str | Path) -> "TeacherStore":
        root = Path(root)
        meta_path = root / "teacher.json"
        if not meta_path.is_file():
            raise DataError(f"no teacher outputs at {root} (missing teacher.json)")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{meta_path}: invalid JSON ({e})") from None
        if meta.get("format") != FORMAT_NAME:
            raise DataError(f"{meta_path}: not an ssov teacher-output directory (format={meta.get('format')!r})")
        if meta.get("version") != FORMAT_VERSION:
            raise DataError(f"{meta_path}: format version {meta.get('version')} is not supported "
                            f"(this ssov reads version {FORMAT_VERSION})")
        return cls(root, meta)

    # ---- TeacherSource -----------------------------------------------------------------------
    def text_embeddings(self) -> Optional[np.ndarray]:
        p = self.root / "text_embeddings.npy"
        if not p.exists():
            return None
        try:
            te = np.load(p, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DataError(f"{p}: unreadable ({e})") from None
        if te.shape != (self.num_prompts, self.feature_dim):
            raise DataError(f"{p}: shape {te.shape}, expected ({self.num_prompts}, {self.feature_dim})")
        return te.astype(np.float32)

    def _path(self, image_token: str) -> Path:
        if not _TOKEN_RE.match(image_token):
            raise DataError(f"invalid image token {image_token!r}")
        return self.root / "images" / f"{image_token}.npz"

    def has(self, image_token: str) -> bool:
        return self._path(image_token).exists()

    def load(self, image_token: str, dense: bool = False) -> TeacherImage:
        """One image's output; ``dense`` also reads the per-pixel features (left compressed otherwise)."""
        p = self._path(image_token)
        if not p.exists():
            raise DataError(f"teacher {self.name}: no output for image {image_token} ({p})")
        try:
            with np.load(p, allow_pickle=False) as z:
                out = TeacherImage(
                    mask_ids=z["mask_ids"], prompt_ids=z["prompt_ids"].astype(np.int32),
                    scores=z["scores"].astype(np.float32),
                    features=z["features"].astype(np.float32) if "features" in z.files else None,
                    dense_features=z["dense_features"] if dense and "dense_features" in z.files else None)
        except NPZ_READ_ERRORS as e:
            raise DataError(f"teacher {self.name}: corrupt output {p} ({e})") from None
        out.validate(self.num_prompts, self.feature_dim, str(p))
        return out

    def write(self, image_token: str, out: TeacherImage) -> None:
        out.validate(self.num_prompts, self.feature_dim, f"teacher {self.name} image {image_token}")
        # uint8 maps when they fit (almost always: K < 256) halve what every later read decompresses.
        mask_dtype = np.uint8 if out.num_masks < 256 else np.uint16
        arrays = {"mask_ids": out.mask_ids.astype(mask_dtype), "prompt_ids": out.prompt_ids.astype(np.int32),
                  "scores": out.scores.astype(np.float32)}
        if out.features is not None:
            arrays["features"] = out.features.astype(np.float16)
        if out.dense_features is not None:
            arrays["dense_features"] = out.dense_features.astype(np.float16)
        save_npz_atomic(self._path(image_token), **arrays)


def open_teacher(kind: str, root: str | Path, num_prompts: Optional[int] = None, **options) -> TeacherSource:
    """Open teacher outputs of any supported layout: ``ssov`` (native) or a reference teacher's own."""
    if kind == "ssov":
        return TeacherStore.open(root)
    from . import reference  # reference-teacher layouts (CAT-Seg / SAN / FC-CLIP)

    return reference.open_reference(kind, root, num_prompts=num_prompts, **options)
