"""`ssov-train teach` (open_clip teacher) -> `fuse` -> `fuse --evaluate` on a tiny synthetic world, and every
shipped teacher config loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from ssov_train.cli import main
from ssov_train.config import load_config
from ssov_train.data.synthetic import generate_world
from ssov_train.pipeline import SuperpointsStageConfig
from ssov_train.superpoints import sample_path

from test_query import TINY_CLIP, feature_checkpoint

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("teacher_*.yaml")), ids=lambda p: p.name)
def test_teacher_configs_load(path):
    cfg = load_config(SuperpointsStageConfig, path)
    assert cfg.teacher.builtin == path.stem.removeprefix("teacher_") and cfg.teacher.format == "ssov"


def test_teach_fuse_and_evaluate_from_the_command_line(tmp_path, capsys):
    dataroot = generate_world(tmp_path / "world", name="cli", num_scenes=2, frames_per_scene=2, seed=3,
                              image_width=160, image_height=90, workers=1)
    cfg = tmp_path / "openclip.yaml"
    cfg.write_text(yaml.safe_dump({
        "dataset": {"kind": "nuscenes", "root": str(dataroot), "version": "v1.0-cli", "split": "val"},
        "teacher": {"format": "ssov", "root": str(tmp_path / "teacher"), "builtin": "openclip",
                    "openclip": {"model": "ssov-test-cli", "random_init": True, "model_config": TINY_CLIP,
                                 "templates": ["a photo of a {}."], "input_short_side": 48, "device": "cpu",
                                 "store_dense_features": True}},
        "output": str(tmp_path / "sp")}))
    assert main(["teach", "--cfg", str(cfg)]) == 0
    assert len(list((tmp_path / "teacher" / "images").glob("*.npz"))) == 2 * 6  # 2 val frames x 6 cameras
    for source in ("mask", "pixel"):
        out = tmp_path / f"fused_{source}"
        assert main(["fuse", "--cfg", str(cfg), "--out", str(out), "--source", source]) == 0
        manifest = json.loads((out / "manifest_val.json").read_text())
        assert manifest["num_samples"] == 2 and manifest["source"] == source
    ckpt = feature_checkpoint(tmp_path / "tmp.pt", 32, tmp_path / "teacher")
    capsys.readouterr()
    assert main(["fuse", "--cfg", str(cfg), "--out", str(tmp_path / "fused_mask"), "--evaluate", str(ckpt)]) == 0
    printed = capsys.readouterr().out
    assert "2 already present" in printed and all(m in printed for m in ("fusion", "distill", "ensemble"))
    summary = json.loads((tmp_path / "fused_mask" / "eval_val" / "summary.json").read_text())
    assert set(summary) == {"fusion", "distill", "ensemble"}
    assert 0 < summary["fusion"]["fused_coverage"] < 1  # points outside every camera have no 2D feature
    token = manifest["samples"][0]["token"]
    from ssov_train.openvocab.fusion import load_fused

    fused = load_fused(sample_path(tmp_path / "fused_mask", token))
    assert fused.features.shape[1] == 32 and np.all(fused.num_views >= 1)
    assert main(["fuse", "--cfg", str(cfg), "--out", str(tmp_path / "fused_mask"), "--source", "pixel"]) == 2
    assert "other settings" in capsys.readouterr().err
