"""`ssov-train ablation` end to end at a tiny size (the full run is `make ablation`)."""

import json

import torch

from ssov_train.ablation import AblationPlan, run_ablation
from ssov_train.cli import main


def test_tiny_ablation_writes_table_plot_and_weights(tmp_path, capsys):
    out = tmp_path / "abl"
    summary = run_ablation(AblationPlan(out=out, train_scenes=2, val_scenes=2, frames=2, image_width=320,
                                        image_height=180, pretrain_epochs=1, train_epochs=1, width=0.25,
                                        max_steps_per_epoch=2, sensors="nuscenes_hdl32e,vlp16"))
    rows = summary["rows"]
    assert list(rows) == ["pseudo-labels (oracle teacher)", "annotation-free, from scratch", "TMP + annotation-free",
                          "TMP + annotation-free + AFI (labels)", "TMP + annotation-free + AFI (probabilities)"]
    assert rows["pseudo-labels (oracle teacher)"]["miou"] > 0.3  # the oracle's labels are far from random
    assert all(0 <= r["miou"] <= 1 for r in rows.values())
    # per preset: one val scene each (scene 2: preset 0, scene 3: preset 1), every row scored on both
    assert summary["presets"] == ["nuscenes_hdl32e", "vlp16"]
    assert all(set(r["per_preset"]) == {"nuscenes_hdl32e", "vlp16"} for r in rows.values())
    splits = json.loads((out / "world" / "v1.0-synthetic" / "splits.json").read_text())
    assert splits["val_nuscenes_hdl32e"] == ["scene-0002"] and splits["val_vlp16"] == ["scene-0003"]
    table = (out / "ablation.md").read_text()
    assert table.count("\n| ") == 5  # one line per row
    assert "| row | val mIoU (all points) | nuscenes_hdl32e | vlp16 |" in table
    assert "Command: `ssov-train ablation --out" in table and "--sensors nuscenes_hdl32e,vlp16" in table
    for png in ("ablation.png", "curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # the models take the sensor-robust input of the synthetic configs
    model = torch.load(out / "model.pt", weights_only=True)
    assert model["input_fields"] == ["normalized_intensity"] and model["model"]["in_channels"] == 2
    assert model["input_normalization"] == {"percentile": 99.0, "clip": 1.5}
    assert json.loads((out / "ablation.json").read_text())["rows"].keys() == rows.keys()
    assert model["stage"] == "annotation_free" and "optimizer" not in model and "state_dict" in model
    # Rerunning resumes every step instead of recomputing (same numbers, no new training).
    assert main(["ablation", "--out", str(out), "--train-scenes", "2", "--val-scenes", "2", "--frames", "2",
                 "--image-width", "320", "--image-height", "180", "--pretrain-epochs", "1", "--train-epochs", "1",
                 "--width", "0.25", "--max-steps-per-epoch", "2", "--sensors", "nuscenes_hdl32e,vlp16"]) == 0
    again = json.loads((out / "ablation.json").read_text())["rows"]
    assert {k: v["miou"] for k, v in again.items()} == {k: v["miou"] for k, v in rows.items()}
