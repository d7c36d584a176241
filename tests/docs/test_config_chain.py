"""The shipped configs of each training route chain: the output directory of one stage is what the next one reads,
the stages a checkpoint passes through agree on what its weights depend on, and nothing is written into a tracked
folder."""

import subprocess
from pathlib import Path

import pytest

from ssov_train.config import load_config
from ssov_train.pipeline import SuperpointsStageConfig
from ssov_train.training.stages import TrainConfig

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config"

# route name -> (the stage that writes teacher outputs + superpoints, TMP, annotation-free, downstream finetuning)
ROUTES = {
    "synthetic": ("superpoints_synthetic", "pretrain_synthetic", "annotation_free_synthetic", "semseg_synthetic"),
    **{t: (f"teacher_{t}", f"pretrain_{t}", f"annotation_free_{t}", "semseg_nuscenes")
       for t in ("catseg", "san", "fcclip")},
}


def _superpoints(name: str) -> SuperpointsStageConfig:
    return load_config(SuperpointsStageConfig, CONFIG / f"{name}.yaml")


def _train(name: str) -> TrainConfig:
    return load_config(TrainConfig, CONFIG / f"{name}.yaml")


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_each_stage_reads_what_the_previous_one_wrote(route):
    first, pretrain_name, free_name, downstream_name = ROUTES[route]
    sp, pretrain, free, downstream = (_superpoints(first), _train(pretrain_name), _train(free_name),
                                      _train(downstream_name))
    assert (pretrain.stage, free.stage, downstream.stage) == ("pretrain", "annotation_free", "downstream")
    assert pretrain.superpoints == sp.output, f"{pretrain_name}.superpoints is not {first}.output"
    assert free.superpoints == sp.output, f"{free_name}.superpoints is not {first}.output"
    # TMP reads the text embeddings of the very teacher run the superpoints came from
    assert (pretrain.teacher.format, pretrain.teacher.root) == (sp.teacher.format, sp.teacher.root)
    for later in (pretrain, free, downstream):
        assert later.dataset.root == sp.dataset.root and later.vocabulary == sp.vocabulary
    # --pretraining-path loads every shape-matching weight: the grid, input and network must agree
    for later in (free, downstream):
        assert (later.voxel, later.feature, later.model.arch, later.model.width) == \
               (pretrain.voxel, pretrain.feature, pretrain.model.arch, pretrain.model.width)


@pytest.mark.parametrize("teacher", ["catseg", "san", "fcclip"])
def test_upstream_teacher_files_lead_to_the_same_superpoints(teacher):
    """Route 1 (upstream's own files read in place) writes where route 2 does, so the training configs serve both."""
    in_place, ssov_run = _superpoints(f"superpoints_{teacher}"), _superpoints(f"teacher_{teacher}")
    assert in_place.teacher.format == teacher and ssov_run.teacher.builtin == teacher
    assert in_place.output == ssov_run.output
    assert in_place.dataset == ssov_run.dataset and in_place.projection == ssov_run.projection


def _tracked(path: Path) -> bool:
    """True when git tracks anything at or under ``path`` (relative to the repository)."""
    out = subprocess.run(["git", "ls-files", "--", str(path)], cwd=REPO, capture_output=True, text=True, check=True)
    return bool(out.stdout.strip())


def test_no_stage_writes_into_a_tracked_folder():
    written = []
    for path in sorted(CONFIG.glob("*.yaml")):
        raw = path.read_text()
        if "\nstage:" in "\n" + raw:
            written.append((path.name, load_config(TrainConfig, path).output))
        elif "\noutput:" in "\n" + raw:
            cfg = load_config(SuperpointsStageConfig, path)
            written.append((path.name, cfg.output))
            if cfg.teacher.builtin:  # `ssov-train teach` writes the teacher outputs
                written.append((path.name, cfg.teacher.root))
    assert len(written) >= 20
    for name, out in written:
        assert Path(out).parts[0] == "runs", f"{name} writes to {out}, outside runs/"
        assert not _tracked(Path(out)), f"{name} writes into tracked {out}"


def test_evaluate_writes_into_the_run_directory_never_beside_a_model_elsewhere(monkeypatch, tmp_path):
    from ssov_train.training.stages import default_evaluation_dir

    monkeypatch.chdir(tmp_path)
    cfg = _train("annotation_free_synthetic")  # output: runs/synthetic/annotation_free, eval_split: val
    run = Path("runs/synthetic/annotation_free")
    assert default_evaluation_dir(cfg, run / "last.pt") == run / "eval_annotation_free_last_val"
    assert default_evaluation_dir(cfg, run / "epoch_002.pt", afi=True) == run / "eval_annotation_free_epoch_002_val_afi"
    demo = Path("models/ssov_synthetic_minkunet34c_w025.ssovpkg")
    assert default_evaluation_dir(cfg, demo) == run / "eval_ssov_synthetic_minkunet34c_w025_val"
    assert default_evaluation_dir(cfg, demo / "model.yaml") == run / "eval_ssov_synthetic_minkunet34c_w025_val"
