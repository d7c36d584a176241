"""Open-vocabulary evaluation of a feature (TMP) model, OpenScene-style: 2D fusion, 3D distillation, ensemble.

Per point, features are classified by their most similar prompt embedding (cosine), and the prompt maps to its
evaluation class through the class dictionary (method.md §9).  Three modes:

* ``fusion``  — the multi-view fused 2D teacher features only; points without one count as wrong, as in OpenScene;
* ``distill`` — the 3D network's features only (every point has one);
* ``ensemble`` — per point, whichever of the two features has the higher best text similarity wins.

Scores are over every point of every scan of the split (method.md §7), with the project's evaluation
accumulator (``metrics.json``, ``iou.png``, ``confusion.png`` per mode).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from ..errors import ConfigError, DataError
from ..io import write_json_atomic
from ..superpoints import sample_path
from ..vocab import ClassDictionary
from .fusion import load_fused
from .query import score_points

MODES = ("fusion", "distill", "ensemble")


def classify(features: np.ndarray, text_embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) best prompt and (N,) its cosine for (N, D) features against (P, D) prompt embeddings."""
    if len(features) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    sim = score_points(features, text_embeddings)
    best = sim.argmax(1)
    return best, sim[np.arange(len(best)), best]


def ensemble_prompts(features_3d: np.ndarray, features_2d: np.ndarray, has_2d: np.ndarray,
                     text_embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenScene's 2D-3D ensemble: per point the feature whose best text similarity is higher decides.

    Returns (N,) prompts and (N,) bool "the 2D feature won".  Points without a 2D feature use the 3D one.
    """
    return _ensemble(classify(features_3d, text_embeddings), classify(features_2d, text_embeddings), has_2d)


def _ensemble(best_3d: tuple[np.ndarray, np.ndarray], best_2d: tuple[np.ndarray, np.ndarray],
              has_2d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`ensemble_prompts` from both features' :func:`classify` results."""
    (p3, s3), (p2, s2) = best_3d, best_2d
    use_2d = np.asarray(has_2d, bool) & (s2 > s3)
    return np.where(use_2d, p2, p3), use_2d


def evaluate_open_vocabulary(segmenter, reader, tokens: Sequence[str], fused_dir: Optional[Path],
                             text_embeddings: np.ndarray, dictionary: ClassDictionary, out_dir: Path,
                             modes: Sequence[str] = MODES, progress: bool = True) -> dict[str, dict]:
    """mIoU of each mode over ``tokens`` (frames with ground truth); returns {mode: metrics}.

    ``segmenter`` wraps a feature model; ``fused_dir`` holds :mod:`.fusion` outputs for the tokens (needed by
    ``fusion`` / ``ensemble``; a scan without a file counts as having no 2D features).
    """
    from ..evaluation.evaluate import EvaluationAccumulator

    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ConfigError(f"unknown open-vocabulary mode(s) {bad}; valid: {list(MODES)}")
    if segmenter.spec.has_classes:
        raise ConfigError("open-vocabulary evaluation needs a feature-head (TMP, stage 'pretrain') model; "
                          "this one predicts classes")
    if len(text_embeddings) != dictionary.num_prompts:
        raise DataError(f"{len(text_embeddings)} text embeddings for {dictionary.num_prompts} prompts")
    if fused_dir is None and any(m != "distill" for m in modes):
        raise ConfigError("fusion / ensemble modes need fused 2D features (ssov-train fuse)")
    prompt_to_eval = dictionary.prompt_to_eval.astype(np.int64)
    accs = {m: EvaluationAccumulator(dictionary, Path(out_dir) / m) for m in modes}
    won_2d = covered = total = 0
    for token in tqdm(tokens, desc="open-vocabulary evaluation", unit="scan", disable=not progress):
        frame = reader.load(token)
        if frame.labels is None:
            raise DataError(f"sample {token} has no ground-truth labels to evaluate against")
        f3 = segmenter.segment(frame.points, frame.intensity).features if set(modes) != {"fusion"} else None
        if fused_dir is not None and sample_path(fused_dir, token).exists():
            f2, has = load_fused(sample_path(fused_dir, token)).dense()
        else:
            f2, has = np.zeros((frame.num_points, text_embeddings.shape[1]), np.float32), np.zeros(frame.num_points, bool)
        covered += int(has.sum())
        total += frame.num_points
        # each feature set is classified once per scan, whichever modes use it
        best_3d = classify(f3, text_embeddings) if f3 is not None else None
        best_2d = classify(f2, text_embeddings) if set(modes) != {"distill"} else None
        for mode, acc in accs.items():
            if mode == "fusion":
                pred = np.where(has, prompt_to_eval[best_2d[0]], 0)
            elif mode == "distill":
                pred = prompt_to_eval[best_3d[0]]
            else:
                prompts, use_2d = _ensemble(best_3d, best_2d, has)
                won_2d += int(use_2d.sum())
                pred = prompt_to_eval[prompts]
            acc.add_scan(token, frame.points, frame.labels, pred)
    results = {}
    for mode, acc in accs.items():
        metrics = acc.finalize(f"open vocabulary ({mode}): {len(tokens)} scans")
        metrics["fused_coverage"] = covered / max(total, 1)
        if mode == "ensemble":
            metrics["ensemble_2d_fraction"] = won_2d / max(total, 1)
        results[mode] = metrics
    write_json_atomic(Path(out_dir) / "summary.json", {
        m: {k: r.get(k) for k in ("miou", "accuracy", "fused_coverage", "ensemble_2d_fraction") if k in r}
        for m, r in results.items()})
    return results
