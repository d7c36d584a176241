"""ONNX export: parity with spconv (real sample, synthetic scan), the demo model, backends, CLI."""

from __future__ import annotations

import numpy as np
import pytest

from ssov_export.onnx_export import MAX_ABS_DIFF, MIN_LABEL_AGREEMENT, compare, spconv_logits
from ssov_train.training.checkpoint import load_model
from ssov_train.geometry.voxelize import voxelize
from ssov_train.inference import Segmenter, open_backend


def parity_on(package, checkpoint, sweep, **options):
    """(Parity, backend) of the package's onnxruntime run vs the spconv model on one sweep."""
    backend = open_backend(package, "onnxruntime", **options)
    xyz, intensity = sweep
    vox = voxelize(xyz, backend.spec.voxel, features=backend.spec.point_features(intensity))
    model, _ = load_model(checkpoint)
    out = backend.run(vox.features, vox.coords, vox.spatial_shape)
    return compare(spconv_logits(model, vox), out, backend.spec.has_classes), backend


@pytest.mark.parametrize("sweep_name", ["real_sweep", "synthetic_sweep"])
@pytest.mark.parametrize("options, flavour", [({}, "cpu"), ({"threads": 2}, "portable")])
def test_small_model_parity(request, small_package, small_checkpoint, sweep_name, options, flavour):
    """Both graphs of the package: the cpu one (one thread, the default) and the portable one (what TensorRT
    builds from; onnxruntime runs it when asked for more threads)."""
    parity, backend = parity_on(small_package, small_checkpoint, request.getfixturevalue(sweep_name), **options)
    assert backend.flavour == flavour
    assert parity.num_voxels > 10000
    assert parity.max_abs_diff <= MAX_ABS_DIFF and parity.label_agreement >= MIN_LABEL_AGREEMENT, parity


def test_graph_choice_is_checked(small_package):
    from ssov_train.errors import ConfigError

    assert open_backend(small_package, "onnxruntime", threads=1, graph="portable").flavour == "portable"
    with pytest.raises(ConfigError, match="one thread only"):  # onnxruntime's summing ScatterND is not thread-safe
        open_backend(small_package, "onnxruntime", threads=2, graph="cpu")
    with pytest.raises(ConfigError, match="graph must be one of"):
        open_backend(small_package, "onnxruntime", graph="fast")


def test_feature_model_parity(tmp_path, checkpoint_factory):
    """A TMP (pre-training) model: L2-normalised feature head, no classes."""
    from ssov_export.onnx_export import export_package

    ckpt = checkpoint_factory(tmp_path / "tmp.pt", stage="pretrain", width=0.0625, feature_dim=12, seed=2)
    pkg, parity = export_package(ckpt, tmp_path / "tmp.ssovpkg")
    assert parity.ok and parity.num_voxels == 15947 and not open_backend(pkg).spec.has_classes


def test_demo_model_parity_and_segmenter(demo_package, real_sweep):
    """The shipped demo model: parity measured by the export itself on the real sample (against spconv), then
    the shared Segmenter on the package (picked by file type) gives those logits' labels on every point."""
    pkg, parity = demo_package
    assert parity.num_voxels == 15947 and parity.max_abs_diff <= MAX_ABS_DIFF and parity.label_agreement == 1.0
    import yaml

    recorded = yaml.safe_load((pkg / "model.yaml").read_text())["parity"]  # the portable graph, checked too
    assert recorded["portable_max_abs_diff"] <= MAX_ABS_DIFF and recorded["portable_label_agreement"] == 1.0
    xyz, intensity = real_sweep
    backend = open_backend(pkg)
    assert backend.name == "onnxruntime"
    result = Segmenter(backend).segment(xyz, intensity)
    vox = voxelize(xyz, backend.spec.voxel, features=backend.spec.point_features(intensity))
    logits = backend.run(vox.features, vox.coords, vox.spatial_shape)
    np.testing.assert_array_equal(result.labels, (logits[:, 1:].argmax(1) + 1)[vox.point_to_voxel])
    assert {"voxelize", "kernel_maps", "network", "softmax"} <= set(result.timings_ms)


def test_backend_handles_tiny_and_odd_scans(small_package):
    backend = open_backend(small_package, "onnxruntime")
    for coords in (np.array([[5, 5, 5]]), np.array([[0, 0, 0], [0, 0, 1], [40, 3, 2]])):
        out = backend.run(np.ones((len(coords), 1), np.float32), coords.astype(np.int32), (48, 16, 16))
        assert out.shape == (len(coords), backend.spec.num_classes) and np.isfinite(out).all()


def test_cli_exports_and_checks(tmp_path, small_checkpoint, capsys):
    from ssov_export.cli import main

    pkg = tmp_path / "cli.ssovpkg"
    assert main(["onnx", "--checkpoint", str(small_checkpoint), "--out", str(pkg), "--profile", "500,16000,40000"]) == 0
    out = capsys.readouterr().out
    assert "max |logit diff|" in out and "labels identical 100.000%" in out
    assert main(["check", str(pkg), "--checkpoint", str(small_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "TensorRT readiness: ok" in out
    assert "parity of the cpu graph" in out and "parity of the portable graph" in out
    assert "parity of the cpu-gemm graph" in out
    assert main(["onnx", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_cli_profile_flags(capsys):
    from ssov_export.cli import build_parser
    from ssov_export.engine import SENSOR_MAX_POINTS

    parser = build_parser()
    base = ["onnx", "--checkpoint", "a.pt", "--out", "p"]
    assert parser.parse_args(base).max_voxels == SENSOR_MAX_POINTS == 262_144
    assert parser.parse_args([*base, "--max-voxels", "460800"]).max_voxels == 460_800
    for bad in (["--max-voxels", "0"], ["--max-voxels", "many"], ["--max-voxels", "9", "--profile", "1,2,3"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*base, *bad])
    assert "--max-voxels" in capsys.readouterr().err


def test_evaluation_on_a_package_reads_the_package_model_spec(tmp_path, synthetic_world, small_checkpoint,
                                                              small_package, capsys):
    """A model file describes itself: evaluated under a config whose model / voxel sections describe another
    network (MinkUNet34C, cartesian grid, what config/annotation_free_synthetic.yaml trains), the package and
    its checkpoint give the mIoU they give under a config that matches them; only the classes must agree.
    Without --out, results go under the config's run directory, never next to the model file."""
    import yaml

    from ssov_train.cli import main
    from ssov_train.config import from_dict, to_dict
    from ssov_train.errors import ConfigError
    from ssov_train.training.stages import TrainConfig, run_evaluation

    root, _, split = synthetic_world

    def config(**sections):
        return from_dict(TrainConfig, {
            "stage": "downstream", "output": str(tmp_path / "run"), "eval_split": split,
            "dataset": {"kind": "nuscenes", "root": str(root), "version": "v1.0-tiny", "split": split},
            "optim": {"batch_size": 1, "num_workers": 0}, **sections})

    matching = config(model={"arch": "MinkUNet18", "width": 0.125},  # the small checkpoint's own settings
                      voxel={"mode": "cylindrical", "size": [0.1, 1.0, 0.1]})
    other = config(model={"arch": "MinkUNet34C", "width": 0.25}, voxel={"mode": "cartesian"})
    reference = run_evaluation(matching, small_checkpoint, tmp_path / "torch", progress=False)
    onnx = run_evaluation(other, small_package, tmp_path / "onnx", progress=False)
    spconv = run_evaluation(other, small_checkpoint, tmp_path / "torch_other", progress=False)
    assert reference["num_scans"] == onnx["num_scans"] == 1
    assert reference["num_labelled_points"] == onnx["num_labelled_points"] > 0
    assert spconv["miou"] == reference["miou"]
    assert onnx["miou"] == pytest.approx(reference["miou"], abs=1e-4)
    with pytest.raises(ConfigError, match="class_names is"):  # another vocabulary: other classes
        run_evaluation(config(vocabulary="semantickitti"), small_package, tmp_path / "bad", progress=False)

    cfg_path = tmp_path / "other.yaml"
    cfg_path.write_text(yaml.safe_dump(to_dict(other)))
    beside = sorted(p.name for p in small_package.parent.iterdir())
    assert main(["evaluate", "--cfg", str(cfg_path), "--model", str(small_package)]) == 0
    out = tmp_path / "run" / f"eval_small_{split}"
    assert f"-> {out / 'metrics.json'}" in capsys.readouterr().out
    assert (out / "metrics.json").is_file() and (out / "iou.png").is_file()
    assert sorted(p.name for p in small_package.parent.iterdir()) == beside
