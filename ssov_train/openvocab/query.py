"""Text queries on lidar points: "where is the traffic cone?" as one score per point (ROS-free core).

Two kinds of model answer a query differently:

* a **feature model** (TMP pre-training, ``stage: pretrain``, ``feature_dim`` set) outputs per-point features
  in the teacher's CLIP space: a point's score is the cosine between its feature and the query's text
  embedding (:func:`score_points`).  The embedding comes from a :class:`TextEmbeddingProvider`: the teacher's
  own text encoder (:class:`OpenClipTextEncoder`, any text) or a precomputed :class:`EmbeddingTable` (the
  teacher's prompt embeddings, or a table shipped with a model package; only the texts it holds);
* a **class model** (annotation-free / downstream) knows only its classes: a query that names one of them
  (an evaluation class such as ``traffic cone``, a dictionary category, or any prompt of the vocabulary, e.g.
  ``safety cone`` or ``sedan``) is scored by that class's probability; any other text is refused with an error
  saying that a feature-head model is needed.

:func:`query_points` does either from a :class:`~ssov_train.inference.Segmenter` (``ssov-train query``); the ROS
node's ``~/query`` topic resolves the text once (:func:`prepare_query`) and scores every cloud it segments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..io import NPZ_READ_ERRORS, save_npz_atomic
from ..vocab import ClassDictionary, load_dictionary

TABLE_FORMAT = "ssov-text-embeddings"


def score_points(features: np.ndarray, text_embedding: np.ndarray) -> np.ndarray:
    """Cosine similarity between per-point features and text embeddings.

    ``features`` (N, D) per-point features (any norm; rows of zeros score 0), ``text_embedding`` (D,) for one
    query -> (N,) float32, or (Q, D) for several -> (N, Q).  Scores lie in [-1, 1]; higher = more like the text.
    The feature space must be the text encoder's (a TMP model distilled from that teacher).
    """
    f = np.asarray(features, dtype=np.float32)
    t = np.asarray(text_embedding, dtype=np.float32)
    single = t.ndim == 1
    t = t[None] if single else t
    if f.ndim != 2 or t.ndim != 2 or f.shape[1] != t.shape[1]:
        raise DataError(f"score_points: features {f.shape} and text embedding {np.shape(text_embedding)} "
                        "must share the feature dimension")
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    s = f @ t.T
    return s[:, 0] if single else s


def normalise_text(text: str) -> str:
    """Case, underscores and spacing do not matter when a query is matched against names."""
    return re.sub(r"\s+", " ", text.replace("_", " ").strip().lower())


# ---- text embeddings ----------------------------------------------------------------------------------

class TextEmbeddingProvider(Protocol):
    """Turns query texts into L2-normalised embeddings in a teacher's CLIP space."""

    feature_dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), feature_dim) float32, L2-normalised rows."""
        ...


@dataclass
class EmbeddingTable:
    """Precomputed text embeddings: exact texts (matched after :func:`normalise_text`) -> vectors.

    On disk an ``.npz`` with ``texts`` (T,) str, ``embeddings`` (T, D) float32 and ``format``; or a teacher-output
    directory (its ``text_embeddings.npy`` with the prompts of the vocabulary it was made with).
    """

    texts: list[str]
    embeddings: np.ndarray
    source: str = ""
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
        if self.embeddings.ndim != 2 or len(self.texts) != len(self.embeddings):
            raise DataError(f"embedding table {self.source}: {len(self.texts)} texts, embeddings {self.embeddings.shape}")
        self._index = {}
        for i, t in enumerate(self.texts):
            self._index.setdefault(normalise_text(t), i)  # duplicate prompts: the first one

    @property
    def feature_dim(self) -> int:
        return int(self.embeddings.shape[1])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows = []
        for text in texts:
            i = self._index.get(normalise_text(text))
            if i is None:
                near = sorted(self._index, key=lambda k: -_overlap(k, normalise_text(text)))[:5]
                raise ConfigError(f"{text!r} is not in the embedding table {self.source} ({len(self._index)} texts, "
                                  f"e.g. {near}); free text needs the teacher's text encoder (--text-encoder)")
            rows.append(self.embeddings[i])
        e = np.stack(rows)
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)

    def save(self, path: str | Path) -> Path:
        save_npz_atomic(path, texts=np.array(self.texts), embeddings=self.embeddings, format=np.array(TABLE_FORMAT))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "EmbeddingTable":
        """An ``.npz`` table, or a teacher-output directory."""
        path = Path(path)
        if path.is_dir():
            return cls.from_teacher(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["format"]) != TABLE_FORMAT:
                    raise DataError(f"{path} is not an ssov text-embedding table")
                return cls([str(t) for t in z["texts"]], z["embeddings"], str(path))
        except FileNotFoundError:
            raise DataError(f"embedding table not found: {path}") from None
        except NPZ_READ_ERRORS as e:
            raise DataError(f"embedding table {path} is unreadable ({e})") from None

    @classmethod
    def from_teacher(cls, root: str | Path, dictionary: Optional[ClassDictionary] = None) -> "EmbeddingTable":
        """The prompt embeddings of a teacher-output directory (ssov format), keyed by the vocabulary's prompts."""
        from ..teachers.format import TeacherStore

        store = TeacherStore.open(root)
        text = store.text_embeddings()
        if text is None:
            raise DataError(f"teacher outputs at {root} have no text embeddings")
        dictionary = dictionary or load_dictionary(store.meta.get("vocabulary", "nuscenes"))
        if dictionary.num_prompts != len(text):
            raise DataError(f"teacher at {root} has {len(text)} prompt embeddings, vocabulary {dictionary.name} "
                            f"{dictionary.num_prompts} prompts")
        return cls(list(dictionary.prompts), text, str(root))


def _overlap(a: str, b: str) -> int:
    return len(set(a.split()) & set(b.split()))


class OpenClipTextEncoder:
    """Any text through an open_clip text tower (the built-in teacher's; same templates, same space)."""

    def __init__(self, cfg):
        from ..teachers.openclip import OpenClipModel

        self.model = OpenClipModel(cfg)
        self.feature_dim = self.model.embed_dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.encode_text(list(texts))


# ---- class models: the vocabulary fallback ------------------------------------------------------------

@dataclass
class ClassMatch:
    class_index: int  # evaluation class of the model (1..C-1)
    matched: str  # "class", "category" or "prompt"
    name: str  # the name that matched


def match_class(text: str, class_names: Sequence[str], dictionary: Optional[ClassDictionary] = None
                ) -> Optional[ClassMatch]:
    """The model class a query names: an evaluation class, else a category or prompt of ``dictionary``.

    Returns None when nothing matches; raises when the text names something the dictionary maps to class 0
    (``ignore``: sky, animals, ...), which a class model cannot score.
    """
    q = normalise_text(text)
    names = [normalise_text(n) for n in class_names]
    if q in names[1:]:
        return ClassMatch(names.index(q, 1), "class", class_names[names.index(q, 1)])
    if dictionary is None:
        return None
    for kind, entries in (("category", [(c.name, c.first_prompt) for c in dictionary.categories]),
                          ("prompt", list(zip(dictionary.prompts, range(dictionary.num_prompts))))):
        for name, prompt_id in entries:
            if normalise_text(name) == q:
                ev = int(dictionary.prompt_to_eval[prompt_id])
                if ev == 0:
                    raise ConfigError(f"{text!r} is a {kind} of vocabulary {dictionary.name} that maps to the ignore "
                                      "class: a class model has no score for it; query a feature-head (TMP) model")
                class_name = dictionary.class_names[ev]
                if normalise_text(class_name) not in names:
                    return None
                return ClassMatch(names.index(normalise_text(class_name)), kind, name)
    return None


# ---- one scan -------------------------------------------------------------------------------------------

@dataclass
class QueryResult:
    scores: np.ndarray  # (N,) float32: class probability (class model) or cosine similarity (feature model)
    mode: str  # "class-probability" or "cosine"
    description: str  # what was scored, for titles and logs
    class_index: Optional[int] = None
    timings_ms: dict = field(default_factory=dict)


@dataclass
class TextQuery:
    """A query resolved against one model, once: scores any number of its scans (:meth:`score`)."""

    text: str
    mode: str  # "class-probability" or "cosine"
    description: str  # what is scored, for titles and logs
    class_index: Optional[int] = None  # class models: the class whose probability is the score
    embedding: Optional[np.ndarray] = None  # feature models: the (D,) text embedding

    @property
    def needs_probs(self) -> bool:
        """Whether :meth:`score` reads the class probabilities (``Segmenter.segment(..., keep_probs=True)``)."""
        return self.mode == "class-probability"

    def score(self, segmentation) -> np.ndarray:
        """(N,) float32 scores from a :class:`~ssov_train.inference.Segmentation` of the scan."""
        if self.needs_probs:
            if segmentation.probs is None:
                raise DataError("a class-model query needs the segmentation's probabilities (keep_probs=True)")
            return segmentation.probs[:, self.class_index].astype(np.float32)
        return score_points(segmentation.features, self.embedding)


def prepare_query(spec, text: str, provider: Optional[TextEmbeddingProvider] = None,
                  dictionary: Optional[ClassDictionary] = None) -> TextQuery:
    """Resolve ``text`` for the model described by ``spec`` (:class:`~ssov_train.inference.ModelSpec`); raises
    ConfigError when this model cannot score it (see the module docstring)."""
    if not text or not text.strip():
        raise ConfigError("empty query text")
    if spec.has_classes:
        if dictionary is None and spec.vocabulary:
            try:
                dictionary = load_dictionary(spec.vocabulary)
            except ConfigError:
                dictionary = None  # a model trained on a vocabulary not installed here: class names only
        match = match_class(text, spec.class_names, dictionary)
        if match is None:
            vocab = f"vocabulary {dictionary.name}" if dictionary is not None else "its class names"
            raise ConfigError(f"{text!r} is not a class, category or prompt of this class model ({vocab}; classes: "
                              f"{', '.join(spec.class_names[1:])}); open-vocabulary text needs a feature-head model "
                              "(TMP, stage 'pretrain') with the teacher's text encoder or an embedding table")
        return TextQuery(text, "class-probability", f"probability of class {spec.class_names[match.class_index]}"
                         + ("" if match.matched == "class" else f" ({match.matched} {match.name!r})"),
                         class_index=match.class_index)
    if provider is None:
        raise ConfigError("this is a feature model: a query needs text embeddings in its teacher's space "
                          "(the teacher's text encoder or an embedding table)")
    embedding = provider.embed([text])[0]
    if spec.feature_dim is not None and len(embedding) != int(spec.feature_dim):
        raise ConfigError(f"text embedding has dim {len(embedding)}, the model's features {spec.feature_dim}: "
                          "use the text encoder of the teacher the model was distilled from")
    return TextQuery(text, "cosine", f"cosine similarity to {text!r}", embedding=embedding)


def query_points(segmenter, xyz: np.ndarray, text: str, intensity: Optional[np.ndarray] = None,
                 provider: Optional[TextEmbeddingProvider] = None,
                 dictionary: Optional[ClassDictionary] = None) -> QueryResult:
    """Score every point of one scan against ``text`` (see the module docstring for the two model kinds).

    ``segmenter``: a :class:`~ssov_train.inference.Segmenter`; ``provider`` is needed for feature models;
    ``dictionary`` (default: the model's vocabulary) resolves prompts and categories for class models.
    A stream of scans (the ROS node) resolves the text once with :func:`prepare_query` and scores each scan's
    own segmentation with :meth:`TextQuery.score`.
    """
    query = prepare_query(segmenter.spec, text, provider, dictionary)
    seg = segmenter.segment(xyz, intensity, keep_probs=query.needs_probs)
    return QueryResult(query.score(seg), query.mode, query.description, query.class_index, seg.timings_ms)


# ---- the `ssov-train query` command -------------------------------------------------------------------

def load_scan(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) xyz and (N,) intensity from a nuScenes ``.pcd.bin`` (5 floats / point), a KITTI ``.bin`` (4) or an
    ``.npy`` (N, 3+) array (column 3 = intensity when present)."""
    from ..data.sample import load_pcd_bin

    path = Path(path)
    if not path.is_file():
        raise DataError(f"scan not found: {path}")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DataError(f"scan {path} is unreadable ({e})") from None
        if arr.ndim != 2 or arr.shape[1] < 3:
            raise DataError(f"scan {path}: expected an (N, 3+) array, got {arr.shape}")
    else:
        arr = load_pcd_bin(path, num_fields=5 if path.name.endswith(".pcd.bin") else 4)
    arr = arr.astype(np.float32)
    intensity = arr[:, 3] if arr.shape[1] > 3 else np.zeros(len(arr), np.float32)
    finite = np.isfinite(arr[:, :3]).all(1)
    if not finite.all():
        raise DataError(f"scan {path}: {int((~finite).sum())} points have NaN/Inf coordinates")
    return arr[:, :3], intensity


def checkpoint_teacher(ckpt: dict) -> Optional[Path]:
    """The teacher-output directory a feature model's checkpoint records (its prompt embeddings are the model's
    text space), if it is still on disk; else None."""
    root = (ckpt.get("text_embeddings") or {}).get("root")
    return Path(root) if root and (Path(root) / "teacher.json").is_file() else None


def text_provider(model, embeddings: Optional[Path] = None, text_encoder: Optional[Path] = None
                  ) -> Optional[TextEmbeddingProvider]:
    """The provider a query of a feature model uses: an explicit table or text-encoder config, else the text
    embeddings the model file carries: an exported package's table (numpy only), or the prompt embeddings of the
    teacher a checkpoint was pre-trained with, if still on disk.  ``model``: an open
    :class:`~ssov_train.inference.Backend`, or a model file path (opened here)."""
    if embeddings is not None:
        return EmbeddingTable.load(embeddings)
    if text_encoder is not None:
        import yaml

        from ..config import from_dict
        from ..teachers.openclip import OpenClipConfig

        try:
            data = yaml.safe_load(Path(text_encoder).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"text encoder config {text_encoder}: {e}") from None
        section = data.get("teacher", {}).get("openclip", data) if isinstance(data.get("teacher"), dict) else data
        return OpenClipTextEncoder(from_dict(OpenClipConfig, section, str(text_encoder)))
    if isinstance(model, (str, Path)):
        from ..inference import open_backend

        backend = open_backend(model)
        source = backend.text_embeddings
        backend.close()
    else:
        source = model.text_embeddings
    return None if source is None else EmbeddingTable.load(source)


def run_query(model: Path, text: str, xyz: np.ndarray, intensity: np.ndarray, out_dir: Path,
              embeddings: Optional[Path] = None, text_encoder: Optional[Path] = None, backend: str = "auto",
              scan_name: str = "") -> dict:
    """Query one scan with a model file; writes ``scores.npy``, ``query.json`` and ``heatmap.png`` into out_dir."""
    from ..evaluation.plots import bev_heatmap
    from ..inference import Segmenter, open_backend
    from ..training.checkpoint import model_label
    from ..io import write_json_atomic, atomic_path

    segmenter = Segmenter(open_backend(model, backend))
    provider = None
    if not segmenter.spec.has_classes:
        provider = text_provider(segmenter.backend, embeddings, text_encoder)
    result = query_points(segmenter, xyz, text, intensity=intensity, provider=provider)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "scores.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, result.scores.astype(np.float32))
    s = result.scores
    top = np.argsort(-s)[: max(1, len(s) // 100)]
    if result.mode == "class-probability":
        vmin, vmax, label = 0.0, 1.0, "class probability"
    else:  # cosines of unrelated points are not 0: start the colour scale at the median so matches stand out
        vmin, vmax, label = float(np.median(s)), float(s.max()), "cosine similarity (grey: below the median)"
    png = bev_heatmap(xyz, s, out_dir / "heatmap.png", f"query {text!r}: {result.description}\n"
                      f"{model_label(model)}, {scan_name or 'scan'} ({len(s)} points)",
                      label=label, vmin=vmin, vmax=vmax)
    summary = {"text": text, "model": str(model), "scan": scan_name, "mode": result.mode,
               "description": result.description, "num_points": int(len(s)),
               "score_min": float(s.min()), "score_mean": float(s.mean()), "score_max": float(s.max()),
               "points_above_0.5": int((s > 0.5).sum()), "top_1pct_mean_xyz": xyz[top].mean(0).round(2).tolist(),
               "timings_ms": result.timings_ms,
               "files": {"scores": str(out_dir / "scores.npy"), "heatmap": str(png)}}
    write_json_atomic(out_dir / "query.json", summary)
    return summary
