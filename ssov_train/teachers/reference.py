"""Readers for the reference teachers' own outputs (CAT-Seg / SAN / FC-CLIP superpixel_generation scripts).

One directory per teacher (``data/<teacher>/superpixels/``), per camera image ``<token>``::

    <token>.png          uint8 mask-id map, 0 = no mask, 1..K = masks
    <token>.json         list of K dicts: id (1..K), category_id (prompt index), area  [FC-CLIP: id, isthing,
                         category_id]
    <token>.pt           (K+1, D) float tensor, row 0 = zeros placeholder  [FC-CLIP: [in_vocab, out_vocab],
                         each (K+1, D)]
    text_embedding.pt    (P, D) text embeddings, once per teacher  [FC-CLIP: (P+1, D), trailing void row]

(plus ``<token>_demo.png`` visualisations, which are ignored).  :class:`ReferenceTeacher` presents these as a
:class:`TeacherSource`; :func:`import_reference` converts them into the native ssov format.  ``.pt`` files
are only ever read with ``torch.load(..., weights_only=True)``: they come from other machines and a full
unpickle would run arbitrary code.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import ConfigError, DataError
from ..vocab.dictionary import load_dictionary
from .format import _TOKEN_RE, TeacherImage, TeacherStore

KINDS = ("catseg", "san", "fcclip")
FCCLIP_FEATURES = ("in_vocab", "out_vocab")  # the two tensors of an FC-CLIP .pt, in saved order
TEXT_FILE = "text_embedding.pt"


def load_pt(path: Path):
    """``torch.load`` restricted to tensors and plain containers; anything else is a DataError."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"missing file {path}") from None
    except pickle.UnpicklingError as e:
        raise DataError(f"{path}: refused, not a plain tensor file ({_first_sentence(e)}); "
                        "ssov does not unpickle arbitrary objects") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise DataError(f"{path}: corrupt or not a torch file ({_first_sentence(e)})") from None


def _first_sentence(e: Exception) -> str:
    """The informative part of torch's error text (not its advice to retry with weights_only=False)."""
    text = str(e)
    _, found, tail = text.partition("WeightsUnpickler error:")
    text = (tail if found else text).strip()
    return re.split(r"(?<=\.)\s|\n", text, maxsplit=1)[0].strip() if text else type(e).__name__


def _matrix(obj, path: Path, what: str) -> np.ndarray:
    """A 2-D float tensor -> float32 array, else a DataError naming the file."""
    import torch

    if not isinstance(obj, torch.Tensor) or obj.ndim != 2 or not obj.is_floating_point():
        desc = f"{tuple(obj.shape)} {obj.dtype} tensor" if isinstance(obj, torch.Tensor) else type(obj).__name__
        raise DataError(f"{path}: {what} must be a 2-D float tensor, got {desc}")
    return obj.float().numpy()


def _normalise(rows: np.ndarray) -> np.ndarray:
    """L2-normalise rows: not every teacher saves unit-length rows (SAN stores raw query embeddings)."""
    norm = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.maximum(norm, 1e-12)).astype(np.float32)


class ReferenceTeacher:
    """A reference teacher's superpixel directory read as a :class:`TeacherSource`.

    ``num_prompts`` is checked against ``text_embedding.pt``; without it, the prompt count is taken from
    that file (minus FC-CLIP's void row).
    """

    def __init__(self, kind: str, root: str | Path, num_prompts: Optional[int] = None,
                 fcclip_features: str = "out_vocab"):
        if kind not in KINDS:
            raise ConfigError(f"unknown reference teacher {kind!r}; valid: {list(KINDS)}")
        if kind == "fcclip" and fcclip_features not in FCCLIP_FEATURES:
            raise ConfigError(f"fcclip_features must be one of {list(FCCLIP_FEATURES)}, got {fcclip_features!r}")
        self.kind = kind
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"no {kind} teacher outputs at {self.root} (not a directory)")
        self.fcclip_features = fcclip_features
        # The non-default FC-CLIP feature gets its own name so the two never mix in one converted store.
        self.name = "fcclip-in_vocab" if kind == "fcclip" and fcclip_features == "in_vocab" else kind
        self._text = self._read_text_embeddings(num_prompts)
        if self._text is None:
            if num_prompts is None:
                raise DataError(f"{self.root / TEXT_FILE} is missing; pass num_prompts to read {kind} outputs")
            self.num_prompts = int(num_prompts)
            self.feature_dim: Optional[int] = None
        else:
            self.num_prompts, self.feature_dim = self._text.shape

    def _read_text_embeddings(self, num_prompts: Optional[int]) -> Optional[np.ndarray]:
        path = self.root / TEXT_FILE
        if not path.is_file():
            return None
        te = _matrix(load_pt(path), path, "text embeddings")
        rows = te.shape[0]
        has_void = self.kind == "fcclip"
        expected = num_prompts if num_prompts is not None else rows - int(has_void)
        if has_void and rows == expected + 1:
            te = te[:-1]  # FC-CLIP appends the void class's embedding
        elif rows != expected:
            raise DataError(f"{path}: {rows} text embeddings, expected {expected}"
                            + (" (+1 void row)" if has_void else "") + " for this vocabulary")
        if not np.isfinite(te).all():
            raise DataError(f"{path}: text embeddings contain NaN/Inf")
        return _normalise(te)

    # ---- TeacherSource -------------------------------------------------------------------------------
    def text_embeddings(self) -> Optional[np.ndarray]:
        return None if self._text is None else self._text.copy()

    def _paths(self, image_token: str) -> tuple[Path, Path, Path]:
        if not _TOKEN_RE.match(image_token):
            raise DataError(f"invalid image token {image_token!r}")
        t = image_token
        return self.root / f"{t}.png", self.root / f"{t}.json", self.root / f"{t}.pt"

    def has(self, image_token: str) -> bool:
        return all(p.is_file() for p in self._paths(image_token))

    def tokens(self) -> list[str]:
        """Every image with at least one output file, complete or not (so partial ones get reported)."""
        names = {p.stem for ext in ("png", "json", "pt") for p in self.root.glob(f"*.{ext}")}
        names.discard(Path(TEXT_FILE).stem)
        return sorted(n for n in names if not (n.endswith("_demo") and n[: -len("_demo")] in names)
                      and _TOKEN_RE.match(n))

    def load(self, image_token: str) -> TeacherImage:
        png, js, pt = self._paths(image_token)
        mask_ids = self._read_mask_ids(png)
        prompt_ids = self._read_segments(js)
        k = len(prompt_ids)
        used = int(mask_ids.max()) if mask_ids.size else 0
        if used > k:
            missing = sorted(set(np.unique(mask_ids[mask_ids > k]).tolist()))
            raise DataError(f"{png}: mask id(s) {missing[:5]} have no entry in {js.name} ({k} entries)")
        if k and (prompt_ids.min() < 0 or prompt_ids.max() >= self.num_prompts):
            bad = sorted(set(prompt_ids[(prompt_ids < 0) | (prompt_ids >= self.num_prompts)].tolist()))
            raise DataError(f"{js}: category_id(s) {bad[:5]} outside the vocabulary's {self.num_prompts} prompts")
        features = self._read_features(pt, k)
        out = TeacherImage(mask_ids=mask_ids, prompt_ids=prompt_ids, scores=np.ones(k, dtype=np.float32),
                           features=features)
        out.validate(self.num_prompts, self.feature_dim, f"teacher {self.name} image {image_token}")
        return out

    # ---- per-image files -----------------------------------------------------------------------------
    @staticmethod
    def _read_mask_ids(path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                arr = np.asarray(im)
        except FileNotFoundError:
            raise DataError(f"missing file {path}") from None
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{path}: unreadable mask-id PNG ({e})") from None
        if arr.ndim != 2 or arr.dtype.kind not in "ui":
            raise DataError(f"{path}: mask-id map must be a single-channel integer image, got {arr.dtype} {arr.shape}")
        return arr.astype(np.uint16)

    @staticmethod
    def _read_segments(path: Path) -> np.ndarray:
        """JSON segment list -> prompt id of mask k+1; ids must be exactly 1..K in order."""
        try:
            segments = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"missing file {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: invalid JSON ({e})") from None
        if not isinstance(segments, list):
            raise DataError(f"{path}: expected a list of segments, got {type(segments).__name__}")
        prompt_ids = np.empty(len(segments), dtype=np.int32)
        for i, seg in enumerate(segments):
            if not isinstance(seg, dict) or not isinstance(seg.get("id"), int) \
                    or not isinstance(seg.get("category_id"), int):
                raise DataError(f"{path}: segment {i} must have integer 'id' and 'category_id', got {seg!r:.80}")
            if seg["id"] != i + 1:
                raise DataError(f"{path}: segment ids must be 1..K in order; entry {i} has id {seg['id']}")
            prompt_ids[i] = seg["category_id"]
        return prompt_ids

    def _read_features(self, path: Path, k: int) -> np.ndarray:
        obj = load_pt(path)
        if self.kind == "fcclip":
            if not isinstance(obj, (list, tuple)) or len(obj) != 2:
                raise DataError(f"{path}: FC-CLIP features must be a 2-element list [in_vocab, out_vocab], "
                                f"got {type(obj).__name__}")
            obj = obj[FCCLIP_FEATURES.index(self.fcclip_features)]
        feats = _matrix(obj, path, "mask features")
        if feats.shape[0] != k + 1:
            raise DataError(f"{path}: {feats.shape[0]} feature rows, expected K+1 = {k + 1} "
                            "(row 0 placeholder + one per mask)")
        if self.feature_dim is not None and feats.shape[1] != self.feature_dim:
            raise DataError(f"{path}: feature dim {feats.shape[1]}, text embeddings have {self.feature_dim}")
        if not np.isfinite(feats).all():
            raise DataError(f"{path}: features contain NaN/Inf")
        return _normalise(feats[1:])


def open_reference(kind: str, root: str | Path, num_prompts: Optional[int] = None,
                   fcclip_features: str = "out_vocab", **_) -> ReferenceTeacher:
    """Open a reference teacher's outputs (``kind`` in catseg | san | fcclip); other options are ignored."""
    return ReferenceTeacher(kind, root, num_prompts=num_prompts, fcclip_features=fcclip_features)


def import_reference(kind: str, src_root: str | Path, dst_root: str | Path, tokens: Optional[list[str]] = None,
                     vocabulary: str = "nuscenes", **opts) -> list[tuple[str, str]]:
    """Convert a reference teacher's outputs into the native ssov format.

    Every image is tried; a bad one is skipped and reported.  Returns ``[(token, reason), ...]`` for the
    images that could not be converted (empty when all went through).
    """
    dictionary = load_dictionary(vocabulary)
    src = open_reference(kind, src_root, num_prompts=dictionary.num_prompts, **opts)
    store = TeacherStore.create(dst_root, teacher=src.name, vocabulary=dictionary.name,
                                num_prompts=src.num_prompts, feature_dim=src.feature_dim,
                                text_embeddings=src.text_embeddings(),
                                created_by=f"ssov import_reference {kind} from {Path(src_root).resolve()}")
    failed: list[tuple[str, str]] = []
    for token in (src.tokens() if tokens is None else tokens):
        try:
            store.write(token, src.load(token))
        except DataError as e:
            failed.append((token, str(e)))
    return failed
