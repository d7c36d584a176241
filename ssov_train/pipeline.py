"""The first stage of the method, wired from one config: teacher outputs -> superpoints -> quality report.

One YAML file (see ``config/superpoints_*.yaml``) drives ``ssov-train teach``, ``ssov-train superpoints``,
``ssov-train report`` and ``ssov-train overlay``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np

from .config import from_dict, to_dict
from .data import DatasetConfig, open_dataset
from .errors import ConfigError, DataError
from .geometry.projection import ProjectionConfig, project_frame
from .superpoints import RunResult, run_superpoints, sample_path, load_superpoints, shard_tokens
from .teachers.format import TeacherSource, TeacherStore, open_teacher
from .vocab import ClassDictionary, load_dictionary


@dataclass
class TeacherConfig:
    # How the outputs lie on disk: ssov (native format) or a reference teacher's own layout.
    format: Literal["ssov", "catseg", "san", "fcclip"]
    root: Path
    # `ssov-train teach` produces the outputs (in ssov format) with a built-in teacher: oracle / boxes (no model),
    # openclip (any local open_clip ViT checkpoint), or catseg / san / fcclip (the released models, GPU).
    builtin: Optional[Literal["oracle", "boxes", "openclip", "catseg", "san", "fcclip"]] = None
    fcclip_features: Literal["out_vocab", "in_vocab"] = "out_vocab"
    oracle: dict[str, Any] = field(default_factory=dict)  # OracleConfig fields
    openclip: dict[str, Any] = field(default_factory=dict)  # teachers.openclip.OpenClipConfig fields
    upstream: dict[str, Any] = field(default_factory=dict)  # teachers.adapters.UpstreamConfig fields

    def check(self) -> None:
        if self.builtin and self.format != "ssov":
            raise ValueError("a built-in teacher writes the ssov format: set teacher.format: ssov")


@dataclass
class SuperpointsStageConfig:
    dataset: DatasetConfig
    teacher: TeacherConfig
    output: Path
    vocabulary: str = "nuscenes"
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)


@dataclass
class Stage:
    """A loaded config with its dictionary and dataset reader opened once."""

    cfg: SuperpointsStageConfig
    dictionary: ClassDictionary
    reader: Any

    @classmethod
    def from_config(cls, cfg: SuperpointsStageConfig) -> "Stage":
        dictionary = load_dictionary(cfg.vocabulary)
        return cls(cfg, dictionary, open_dataset(cfg.dataset, dictionary))

    def tokens(self, split: Optional[str] = None) -> list[str]:
        return self.reader.split_tokens(split or self.cfg.dataset.split)

    def teacher(self) -> TeacherSource:
        t = self.cfg.teacher
        if t.format == "ssov" and not (Path(t.root) / "teacher.json").exists():
            hint = " (run `ssov-train teach --cfg ...` first)" if t.builtin else ""
            raise DataError(f"no teacher outputs at {t.root}{hint}")
        return open_teacher(t.format, t.root, num_prompts=self.dictionary.num_prompts,
                            fcclip_features=t.fcclip_features)


def build_builtin_teacher(cfg: TeacherConfig, dictionary: ClassDictionary):
    if cfg.builtin == "oracle":
        from .teachers.oracle import OracleConfig, OracleTeacher

        return OracleTeacher(dictionary, from_dict(OracleConfig, cfg.oracle, "teacher.oracle"))
    if cfg.builtin == "boxes":
        if cfg.oracle:
            raise ConfigError("teacher.oracle settings given but teacher.builtin is 'boxes'")
        from .teachers.boxes import BoxTeacher

        return BoxTeacher(dictionary)
    if cfg.builtin in ("openclip", "catseg", "san", "fcclip"):
        from .teachers.adapters import build_model_teacher

        return build_model_teacher(cfg, dictionary)
    raise ConfigError("teacher.builtin is not set: this config reads existing teacher outputs; "
                      "set teacher.builtin to 'oracle' (synthetic worlds), 'boxes' (frames with 3D boxes), "
                      "'openclip' (a local open_clip checkpoint) or catseg / san / fcclip (released models, GPU)")


def run_teach(stage: Stage, shard: Optional[tuple[int, int]] = None, overwrite: bool = False,
              progress: bool = True) -> list[tuple[str, str]]:
    """Run the built-in teacher over the split; returns the (image or sample, reason) failures.

    ``shard`` None: this torchrun process's shard (RANK of WORLD_SIZE), or everything outside torchrun."""
    from .teachers.runner import create_store_for, distributed_shard, run_teacher

    shard = shard or distributed_shard() or (0, 1)
    teacher = build_builtin_teacher(stage.cfg.teacher, stage.dictionary)
    store = create_store_for(teacher, stage.cfg.teacher.root, stage.dictionary.name)
    failures: list[tuple[str, str]] = []

    def frames():
        for token in shard_tokens(stage.tokens(), shard):
            try:
                yield stage.reader.load(token)
            except (DataError, OSError) as e:
                failures.append((token, str(e)))

    failures += run_teacher(teacher, frames(), store, overwrite=overwrite, progress=progress)
    return failures


def run_superpoints_stage(stage: Stage, shard: tuple[int, int] = (0, 1), overwrite: bool = False,
                          progress: bool = True) -> RunResult:
    cfg = stage.cfg
    info = {"dataset": to_dict(cfg.dataset), "vocabulary": stage.dictionary.name,
            "teacher": {"format": cfg.teacher.format, "root": str(cfg.teacher.root)},
            "projection": to_dict(cfg.projection)}
    return run_superpoints(stage.reader, stage.tokens(), stage.teacher(), stage.dictionary, cfg.projection,
                           cfg.output, split=cfg.dataset.split, shard=shard, overwrite=overwrite,
                           progress=progress, run_info=info)


def run_report(stage: Stage, progress: bool = True) -> dict:
    from .evaluation.pseudo_labels import pseudo_label_report

    return pseudo_label_report(stage.cfg.output, stage.cfg.dataset.split, stage.reader, stage.dictionary,
                               progress=progress)


def render_overlay(stage: Stage, token: Optional[str], path: Path, color_by: Literal["depth", "pseudo_label"] = "depth") -> Path:
    """Projected points over the frame's camera images, coloured by depth or by pseudo-label."""
    from .evaluation.plots import DEPTH_SCALE, camera_overlay_grid, depth_colors

    token = token or stage.tokens()[0]
    frame = stage.reader.load(token)
    projections = project_frame(frame, ProjectionConfig(occlusion=stage.cfg.projection.occlusion,
                                                        min_depth=stage.cfg.projection.min_depth))
    legend, sizes, colorbar = None, None, None
    if color_by == "pseudo_label":
        sp = load_superpoints(sample_path(stage.cfg.output, token))
        palette = stage.dictionary.palette.copy()
        palette[0] = (170, 170, 170)  # unlabelled points in grey, so the labelled ones stand out
        colors = [palette[sp.pseudo_label[p.point_index]] for p in projections]
        names = ["no label", *stage.dictionary.eval_classes]
        legend = {names[i]: palette[i] for i in np.unique(sp.pseudo_label)}
        sizes = [np.where(sp.pseudo_label[p.point_index] > 0, 4.0, 0.8) for p in projections]
    else:
        colors = [depth_colors(p.depth) for p in projections]
        colorbar = DEPTH_SCALE
    titles = [f"{c.name}: {len(p.point_index)} points" for c, p in zip(frame.cameras, projections)]
    seen = np.zeros(frame.num_points, bool)
    for p in projections:
        seen[p.point_index] = True
    return camera_overlay_grid([c.load_image() for c in frame.cameras], titles, [p.uv for p in projections], colors,
                               path, suptitle=f"{frame.dataset} {token}: {seen.mean():.0%} of "
                                              f"{frame.num_points} points seen by a camera ({color_by})",
                               legend=legend, sizes=sizes, colorbar=colorbar)
