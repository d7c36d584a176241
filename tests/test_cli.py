"""`ssov-train` end to end on the shipped real nuScenes sample (box teacher), as a user runs it."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from ssov_train.cli import main
from ssov_train.superpoints import load_superpoints, sample_path

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def sample_cfg(tmp_path):
    cfg = yaml.safe_load((REPO / "config" / "superpoints_sample.yaml").read_text())
    cfg["dataset"]["root"] = str(REPO / "data" / "nuscenes_sample")
    cfg["teacher"]["root"] = str(tmp_path / "teacher")
    cfg["output"] = str(tmp_path / "sp")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_teach_superpoints_report_overlay_on_real_sample(sample_cfg, tmp_path, capsys):
    assert main(["teach", "--cfg", str(sample_cfg)]) == 0
    assert len(list((tmp_path / "teacher" / "images").glob("*.npz"))) == 6
    assert main(["superpoints", "--cfg", str(sample_cfg)]) == 0
    report = json.loads((tmp_path / "sp" / "report_train.json").read_text())
    assert report["num_samples"] == 1 and report["num_points"] == 34688
    # Box-derived masks label the points inside boxes, and mostly with the box's own class.
    assert report["box_points_labelled_fraction"] > 0.9
    assert report["box_points_accuracy"] > 0.85
    sp = load_superpoints(sample_path(tmp_path / "sp", "ca9a282c9e77460f8360f564131a8af5"))
    assert sp.num_points == 34688 and (sp.pseudo_label > 0).sum() > 1000
    png = tmp_path / "overlay.png"
    assert main(["overlay", "--cfg", str(sample_cfg), "--color-by", "pseudo_label", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 100_000
    # A second run resumes: nothing is recomputed.
    assert main(["superpoints", "--cfg", str(sample_cfg), "--no-report"]) == 0
    assert "0 computed, 1 already present" in capsys.readouterr().out


def test_bad_sample_is_listed_and_exit_code_says_so(sample_cfg, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(REPO / "data" / "nuscenes_sample", data)
    cfg = yaml.safe_load(sample_cfg.read_text())
    cfg["dataset"]["root"] = str(data)
    sample_cfg.write_text(yaml.safe_dump(cfg))
    assert main(["teach", "--cfg", str(sample_cfg)]) == 0
    lidar = next(data.glob("*.pcd.bin"))
    lidar.write_bytes(lidar.read_bytes()[:1234])  # truncated sweep
    assert main(["superpoints", "--cfg", str(sample_cfg)]) == 1
    err = capsys.readouterr().err
    assert "1 item(s) skipped" in err and "truncated" in err and lidar.name in err


def test_missing_teacher_outputs_and_bad_config_are_one_line_errors(sample_cfg, tmp_path, capsys):
    assert main(["superpoints", "--cfg", str(sample_cfg)]) == 2
    assert "no teacher outputs" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(sample_cfg.read_text().replace("occlusion:", "occlusoin:"))
    assert main(["report", "--cfg", str(bad)]) == 2
    assert "did you mean 'occlusion'" in capsys.readouterr().err


def test_set_overrides_are_typed_and_validated(sample_cfg, tmp_path, capsys):
    assert main(["teach", "--cfg", str(sample_cfg)]) == 0
    out = tmp_path / "sp_last"
    assert main(["superpoints", "--cfg", str(sample_cfg), "--output", str(out), "--no-report",
                 "--set", "projection.multi_camera=last", "--set", "projection.occlusion=false"]) == 0
    info = json.loads((out / "manifest_train.json").read_text())["projection"]
    assert info["multi_camera"] == "last" and info["occlusion"] is False
    assert main(["superpoints", "--cfg", str(sample_cfg), "--set", "projection.min_depth=near"]) == 2
    assert "projection.min_depth: expected a number" in capsys.readouterr().err


def test_shard_argument_validation():
    with pytest.raises(SystemExit):
        main(["superpoints", "--cfg", "x.yaml", "--shard", "5/4"])


def test_console_script_runs():
    exe = Path(sys.executable).parent / "ssov-train"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ssov_train"]
    out = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for sub in ("synth", "teach", "superpoints", "report", "overlay"):
        assert sub in out.stdout
