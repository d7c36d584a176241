"""Superpixels -> superpoints: point <-> (camera, pixel, mask) pairings, superpoints and pseudo-labels.

For every scan this computes, once, everything the later stages need, so TMP and annotation-free training
read files instead of re-projecting (the reference re-projects every sample on the fly):

* pairings: every (point, camera) where the point projects into a teacher mask (occlusion-tested);
  a point seen by two cameras has two pairings (TMP uses both);
* superpoints: one per (camera, mask) hit by at least one point, with the mask's prompt, score and
  feature; each point is assigned the superpoint of its winning pairing;
* pseudo-labels: the evaluation class of the point, decided by a score-weighted vote over its pairings
  (``multi_camera: vote``) or by the last camera, as the reference does (``multi_camera: last``).

Stored per sample as ``<out>/samples/<sample token>.npz`` (compressed) plus one ``<out>/manifest_<split>.json``
per split, so several splits can share an output directory.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from .data.frame import Frame
from .errors import DataError
from .geometry.projection import ProjectionConfig, project_to_camera
from .io import load_npz_with_meta, save_npz_atomic, write_json_atomic
from .jobs import Interrupted, progress_bar
from .teachers.format import TeacherSource
from .vocab import ClassDictionary

FORMAT_NAME = "ssov-superpoints"
FORMAT_VERSION = 1


@dataclass
class SuperpointSample:
    token: str
    num_points: int
    cameras: list[str]
    image_tokens: list[str]
    pair_point: np.ndarray  # (M,) int32 point index
    pair_camera: np.ndarray  # (M,) uint8 index into cameras
    pair_pixel: np.ndarray  # (M, 2) uint16 (row, col) in the camera image
    pair_mask: np.ndarray  # (M,) uint16 mask id in that camera's teacher output (>= 1)
    pair_superpoint: np.ndarray  # (M,) int32
    superpoint_camera: np.ndarray  # (S,) uint8
    superpoint_mask: np.ndarray  # (S,) uint16
    superpoint_prompt: np.ndarray  # (S,) int32
    superpoint_score: np.ndarray  # (S,) float32
    superpoint_feature: Optional[np.ndarray]  # (S, D) float16 or None
    superpoint: np.ndarray  # (N,) int32 superpoint of the point's winning pairing, -1 = none
    pseudo_label: np.ndarray  # (N,) uint8 evaluation class, 0 = ignore / unlabelled
    pseudo_prompt: np.ndarray  # (N,) int16 winning prompt id, -1 = none
    pseudo_score: np.ndarray  # (N,) float16 vote confidence in [0, 1]
    stats: dict = field(default_factory=dict)

    @property
    def num_superpoints(self) -> int:
        return int(self.superpoint_camera.shape[0])

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {f.name: getattr(self, f.name) for f in fields(self)
                  if isinstance(getattr(self, f.name), np.ndarray)}
        arrays["meta"] = np.array(json.dumps({
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "token": self.token, "num_points": self.num_points,
            "cameras": self.cameras, "image_tokens": self.image_tokens, "stats": self.stats}))
        return arrays


def save_superpoints(path: str | Path, sample: SuperpointSample) -> None:
    save_npz_atomic(path, **sample.to_arrays())


_ARRAY_FIELDS = tuple(f.name for f in fields(SuperpointSample) if f.name not in
                      ("token", "num_points", "cameras", "image_tokens", "stats"))


def load_superpoints(path: str | Path, arrays: Optional[Iterable[str]] = None) -> SuperpointSample:
    """Read a superpoints file. ``arrays`` names the arrays to read (default: all); the others are not
    decompressed (npz members load lazily) and come back as None: annotation-free training reads only
    ``pseudo_label`` instead of the pairings and the (S, D) features."""
    path = Path(path)
    wanted = _ARRAY_FIELDS if arrays is None else tuple(arrays)
    unknown = sorted(set(wanted) - set(_ARRAY_FIELDS))
    if unknown:
        raise ValueError(f"unknown superpoints arrays {unknown}; known: {list(_ARRAY_FIELDS)}")
    meta, arrays = load_npz_with_meta(path, "superpoints", FORMAT_NAME, FORMAT_VERSION, wanted)
    missing = [k for k, v in arrays.items() if v is None and k != "superpoint_feature"]
    if missing:
        raise DataError(f"superpoints file {path} lacks the arrays {missing}")
    arrays.update({k: None for k in _ARRAY_FIELDS if k not in arrays})
    return SuperpointSample(token=meta["token"], num_points=meta["num_points"], cameras=meta["cameras"],
                            image_tokens=meta["image_tokens"], stats=meta.get("stats", {}), **arrays)


def _teacher_pixel(rc: np.ndarray, cam_hw: tuple[int, int], map_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Image pixel -> teacher-map pixel (teachers may work at a lower resolution than the camera)."""
    if cam_hw == map_hw:
        return rc[:, 0], rc[:, 1]
    r = np.minimum(rc[:, 0] * map_hw[0] // cam_hw[0], map_hw[0] - 1)
    c = np.minimum(rc[:, 1] * map_hw[1] // cam_hw[1], map_hw[1] - 1)
    return r, c


def compute_superpoints(frame: Frame, teacher: TeacherSource, dictionary: ClassDictionary,
                        cfg: ProjectionConfig) -> SuperpointSample:
    """Pairings, superpoints and pseudo-labels of one frame from its cameras' teacher outputs."""
    if teacher.num_prompts != dictionary.num_prompts:
        raise DataError(f"teacher {teacher.name} has {teacher.num_prompts} prompts but the dictionary "
                        f"{dictionary.name} has {dictionary.num_prompts}")
    n = frame.num_points
    pair_point, pair_camera, pair_pixel, pair_mask, pair_sp = [], [], [], [], []
    sp_camera, sp_mask, sp_prompt, sp_score, sp_feature = [], [], [], [], []
    occluded_total = 0
    for ci, cam in enumerate(frame.cameras):
        if not teacher.has(cam.token):
            raise DataError(f"teacher {teacher.name} has no output for {cam.name} image {cam.token}")
        out = teacher.load(cam.token)
        proj, occluded = project_to_camera(frame.points, cam, cfg)
        occluded_total += occluded
        rc = proj.pixel_rc
        mr, mc = _teacher_pixel(rc, (cam.height, cam.width), out.mask_ids.shape)
        mask = out.mask_ids[mr, mc].astype(np.int64)
        hit = mask > 0
        masks_hit, local_sp = np.unique(mask[hit], return_inverse=True)
        base = sum(len(x) for x in sp_mask)  # superpoint ids run over all cameras of the scan
        pair_point.append(proj.point_index[hit])
        pair_camera.append(np.full(int(hit.sum()), ci))
        pair_pixel.append(rc[hit])
        pair_mask.append(mask[hit])
        pair_sp.append(local_sp + base)
        sp_camera.append(np.full(len(masks_hit), ci))
        sp_mask.append(masks_hit)
        sp_prompt.append(out.prompt_ids[masks_hit - 1])
        sp_score.append(out.scores[masks_hit - 1])
        if out.features is not None:
            sp_feature.append(out.features[masks_hit - 1])

    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
    pp, pc, pm, psp = cat(pair_point, np.int32), cat(pair_camera, np.uint8), cat(pair_mask, np.uint16), cat(pair_sp, np.int32)
    ppix = np.concatenate(pair_pixel).astype(np.uint16) if pair_pixel else np.zeros((0, 2), np.uint16)
    spc, spm, spp, sps = cat(sp_camera, np.uint8), cat(sp_mask, np.uint16), cat(sp_prompt, np.int32), cat(sp_score, np.float32)
    spf = None
    if sp_feature and len(sp_feature) == len(frame.cameras):
        spf = np.concatenate(sp_feature).astype(np.float16)

    label, prompt, score, point_sp = _assign(n, pp, pc, psp, spp[psp], sps[psp], dictionary, cfg.multi_camera)
    paired = np.zeros(n, bool)
    paired[pp] = True
    stats = {"num_pairings": int(len(pp)), "num_superpoints": int(len(spc)),
             "paired_fraction": float(paired.mean()), "labelled_fraction": float((label > 0).mean()),
             "multi_camera_points": int((np.bincount(pp, minlength=n) > 1).sum())}
    if cfg.occlusion:
        stats["occluded_pairs"] = int(occluded_total)
    return SuperpointSample(
        token=frame.token, num_points=n, cameras=[c.name for c in frame.cameras],
        image_tokens=[c.token for c in frame.cameras], pair_point=pp, pair_camera=pc, pair_pixel=ppix,
        pair_mask=pm, pair_superpoint=psp, superpoint_camera=spc, superpoint_mask=spm, superpoint_prompt=spp,
        superpoint_score=sps, superpoint_feature=spf, superpoint=point_sp, pseudo_label=label,
        pseudo_prompt=prompt, pseudo_score=score, stats=stats)


def _assign(n: int, pair_point: np.ndarray, pair_camera: np.ndarray, pair_sp: np.ndarray, pair_prompt: np.ndarray,
            pair_score: np.ndarray, dictionary: ClassDictionary, rule: str):
    """Per point: winning pairing -> (pseudo label, prompt, confidence, superpoint)."""
    label = np.zeros(n, np.uint8)
    prompt = np.full(n, -1, np.int16)
    conf = np.zeros(n, np.float16)
    point_sp = np.full(n, -1, np.int32)
    if len(pair_point) == 0:
        return label, prompt, conf, point_sp
    pair_eval = dictionary.prompt_to_eval[pair_prompt].astype(np.int64)
    c = dictionary.num_classes
    counts = np.bincount(pair_point, minlength=n)
    if rule == "last":
        # Reference behaviour: the later camera in the list overwrites earlier ones.
        order = np.lexsort((-pair_camera.astype(np.int64), pair_point))
        winner_eval = None
    else:
        # Score-weighted vote over evaluation classes; the winning pairing is the best-scoring one that
        # agrees with the vote (ties: lower camera index).
        votes = np.bincount(pair_point.astype(np.int64) * c + pair_eval, weights=pair_score.astype(np.float64),
                            minlength=n * c).reshape(n, c)
        winner_eval = votes.argmax(1)
        agrees = pair_eval == winner_eval[pair_point]
        order = np.lexsort((pair_camera, -pair_score, ~agrees, pair_point))
    first = order[np.r_[True, pair_point[order][1:] != pair_point[order][:-1]]]
    pts = pair_point[first]
    label[pts] = pair_eval[first]
    prompt[pts] = pair_prompt[first]
    point_sp[pts] = pair_sp[first]
    if winner_eval is None:
        conf[pts] = pair_score[first]
    else:
        agree_score = np.bincount(pair_point, weights=pair_score * (pair_eval == winner_eval[pair_point]), minlength=n)
        conf[pts] = (agree_score[pts] / counts[pts]).astype(np.float16)
    return label, prompt, conf, point_sp


# ---- batch runner ---------------------------------------------------------------------------------

@dataclass
class RunResult:
    done: list[str] = field(default_factory=list)  # computed in this run
    skipped: list[str] = field(default_factory=list)  # already present (resume)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (token, reason)
    seconds: float = 0.0


def sample_path(out_dir: str | Path, token: str) -> Path:
    return Path(out_dir) / "samples" / f"{token.replace('/', '_')}.npz"


def shard_tokens(tokens: list[str], shard: tuple[int, int]) -> list[str]:
    """Round-robin shard ``i`` of ``n`` (0-based) of a token list."""
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"invalid shard {i}/{n}: need 0 <= i < n")
    return tokens[i::n]


def run_superpoints(reader, tokens: list[str], teacher: TeacherSource, dictionary: ClassDictionary,
                    cfg: ProjectionConfig, out_dir: str | Path, split: str = "all", shard: tuple[int, int] = (0, 1),
                    overwrite: bool = False, progress: bool = True, run_info: Optional[dict] = None) -> RunResult:
    """Compute and store superpoints for ``tokens`` (this shard's part); resumable, skips bad samples."""
    settings = {"projection": asdict(cfg), "teacher": teacher.name, "vocabulary": dictionary.name,
                "num_prompts": dictionary.num_prompts}

    def compute(token: str, path: Path) -> None:
        save_superpoints(path, compute_superpoints(reader.load(token), teacher, dictionary, cfg))

    return run_per_sample(tokens, compute, out_dir, settings, {"split": split, **(run_info or {})}, "superpoints",
                          split, shard, overwrite, progress)


def run_per_sample(tokens: list[str], compute: Callable[[str, Path], None], out_dir: str | Path, settings: dict,
                   manifest_info: dict, what: str, split: str = "all", shard: tuple[int, int] = (0, 1),
                   overwrite: bool = False, progress: bool = True) -> RunResult:
    """The batch loop of every per-sample stage: this shard's tokens, ``compute(token, sample file)`` for each
    one not already done (resume), a bad sample listed and skipped (DataError / OSError), the split's manifest
    written at the end.  ``settings`` must match those of earlier runs into ``out_dir``."""
    out_dir = Path(out_dir)
    manifest = manifest_path(out_dir, split)  # validates the split name before any work
    _check_settings(out_dir, settings, overwrite, what)
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    result = RunResult()
    t0 = time.perf_counter()
    bar = progress_bar(shard_tokens(tokens, shard), enabled=progress, desc=f"{what} {shard[0] + 1}/{shard[1]}",
                       unit="scan")
    try:
        for token in bar:
            path = sample_path(out_dir, token)
            if path.exists() and not overwrite:
                result.skipped.append(token)
                continue
            try:
                compute(token, path)
                result.done.append(token)
            except (DataError, OSError) as e:
                result.failed.append((token, str(e)))
                bar.write(f"skipped sample {token}: {e}", file=sys.stderr)
    except KeyboardInterrupt:  # every sample file is atomic: a rerun skips those written
        raise Interrupted(f"after {len(result.done)} {what} samples computed ({len(result.skipped)} already "
                          "present)") from None
    finally:
        bar.close()
    result.seconds = time.perf_counter() - t0
    write_manifest(manifest, tokens, result, manifest_info)
    return result


def _check_settings(out_dir: Path, settings: dict, overwrite: bool, what: str) -> None:
    """Resuming must not mix samples made with other settings into one output directory."""
    path = out_dir / "settings.json"
    if path.exists() and not overwrite:
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON ({e})") from None
        if previous != settings:
            changed = sorted(k for k in settings if previous.get(k) != settings[k])
            raise DataError(f"{out_dir} holds {what} made with other settings ({', '.join(changed)} differ); "
                            "use another output directory, or --overwrite to recompute everything")
    if overwrite or not path.exists():
        write_json_atomic(path, settings)


def manifest_path(out_dir: str | Path, split: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", split):
        raise DataError(f"split name {split!r} must be letters, digits, '_', '-' or '.'")
    return Path(out_dir) / f"manifest_{split}.json"


def write_manifest(path: Path, tokens: list[str], result: RunResult, run_info: dict) -> dict:
    """The split's manifest: every sample of the split with its file, or why it is missing."""
    out_dir = path.parent
    failed = dict(result.failed)
    samples, missing = [], []
    for token in tokens:
        sample_file = sample_path(out_dir, token)
        if sample_file.exists():
            samples.append({"token": token, "file": str(sample_file.relative_to(out_dir))})
        else:
            missing.append({"token": token, "reason": failed.get(token, "not computed yet (another shard?)")})
    manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **run_info,
                "num_samples": len(samples), "num_missing": len(missing), "samples": samples, "missing": missing}
    write_json_atomic(path, manifest)
    return manifest


def read_manifest(out_dir: str | Path, split: str) -> dict:
    p = manifest_path(out_dir, split)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise DataError(f"no superpoints for split {split!r} at {out_dir} (missing {p.name}); "
                        "run `ssov-train superpoints` first") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{p}: invalid JSON ({e})") from None


def iter_superpoints(out_dir: str | Path, split: str) -> Iterable[SuperpointSample]:
    out_dir = Path(out_dir)
    for entry in read_manifest(out_dir, split)["samples"]:
        yield load_superpoints(out_dir / entry["file"])
