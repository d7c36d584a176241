"""`ssov-train ablation` end to end at a tiny size (the full run is `make ablation`)."""

import json

import torch

from ssov_train.ablation import AblationPlan, run_ablation
from ssov_train.cli import main


def test_tiny_ablation_writes_table_plot_and_weights(tmp_path, capsys):
    out = tmp_path / "abl"
    summary = run_ablation(AblationPlan(out=out, train_scenes=1, val_scenes=1, frames=3, image_width=320,
                                        image_height=180, pretrain_epochs=1, train_epochs=1, width=0.25,
                                        max_steps_per_epoch=2))
    rows = summary["rows"]
    assert list(rows) == ["pseudo-labels (oracle teacher)", "annotation-free, from scratch", "TMP + annotation-free",
                          "TMP + annotation-free + AFI"]
    assert rows["pseudo-labels (oracle teacher)"]["miou"] > 0.3  # the oracle's labels are far from random
    assert all(0 <= r["miou"] <= 1 for r in rows.values())
    table = (out / "ablation.md").read_text()
    assert table.count("\n| ") == 4  # one line per row
    assert "Command: `ssov-train ablation --out" in table
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "ablation.json").read_text())["rows"].keys() == rows.keys()
    model = torch.load(out / "model.pt", weights_only=True)
    assert model["stage"] == "annotation_free" and "optimizer" not in model and "state_dict" in model
    # Rerunning resumes every step instead of recomputing (same numbers, no new training).
    assert main(["ablation", "--out", str(out), "--train-scenes", "1", "--val-scenes", "1", "--frames", "3",
                 "--image-width", "320", "--image-height", "180", "--pretrain-epochs", "1", "--train-epochs", "1",
                 "--width", "0.25", "--max-steps-per-epoch", "2"]) == 0
    again = json.loads((out / "ablation.json").read_text())["rows"]
    assert {k: v["miou"] for k, v in again.items()} == {k: v["miou"] for k, v in rows.items()}
