"""Model package: sidecar round trip, sha256 check, clear errors for damaged packages, backend selection."""

from __future__ import annotations

import shutil

import pytest
import yaml

from ssov_export.package import CPU_ONNX_FILE, ONNX_FILE, SIDECAR_FILE, load_package
from ssov_train.errors import DataError
from ssov_train.inference import open_backend
from ssov_train.inference.backends import default_backend
from ssov_train.training.checkpoint import load_checkpoint
from ssov_train.inference.spec import ModelSpec


def test_sidecar_round_trip(small_package, small_checkpoint):
    pkg = load_package(small_package)
    expected = ModelSpec.from_checkpoint(load_checkpoint(small_checkpoint)).to_dict()
    assert pkg.spec.to_dict() == expected
    sidecar = yaml.safe_load((small_package / SIDECAR_FILE).read_text())
    assert sidecar["onnx"]["index_dtype"] == "int32" and sidecar["onnx"]["opset"] == 17
    assert sidecar["parity"]["max_abs_diff"] <= 1e-4 and set(sidecar["versions"]) >= {"torch", "onnxruntime"}
    assert sidecar["profile"]["num_voxels"][1] == sidecar["parity"]["sample_voxels"]
    # the same package reached through its files
    assert load_package(small_package / ONNX_FILE).root == load_package(small_package / SIDECAR_FILE).root


def test_backend_is_chosen_by_file_type(small_package, small_checkpoint):
    assert default_backend(small_checkpoint) == "torch"
    assert default_backend(small_package) == "onnxruntime"
    assert open_backend(small_package / SIDECAR_FILE).name == "onnxruntime"


@pytest.mark.parametrize("name", [ONNX_FILE, CPU_ONNX_FILE])
def test_tampered_onnx_is_refused(small_package, tmp_path, name):
    copy = shutil.copytree(small_package, tmp_path / "tampered.ssovpkg")
    data = bytearray((copy / name).read_bytes())
    data[-10] ^= 0xFF
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{name}: sha256 .* does not match the sidecar"):
        open_backend(copy)


def test_package_without_cpu_graph_runs_the_portable_one(small_package, tmp_path):
    """Packages written before the cpu graph existed keep working (onnxruntime runs model.onnx)."""
    copy = shutil.copytree(small_package, tmp_path / "old.ssovpkg")
    (copy / CPU_ONNX_FILE).unlink()
    _edit(copy, lambda s: s.pop("onnx_cpu"))
    assert open_backend(copy, "onnxruntime").flavour == "portable"


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / SIDECAR_FILE).unlink(), "not a model package"),
    (lambda p: (p / ONNX_FILE).unlink(), "model.onnx missing"),
    (lambda p: (p / CPU_ONNX_FILE).unlink(), "model_cpu.onnx missing"),
    (lambda p: (p / SIDECAR_FILE).write_text("format: [unclosed"), "invalid YAML"),
    (lambda p: (p / SIDECAR_FILE).write_text("format: something-else\n"), "not an ssov-model-package"),
    (lambda p: _edit(p, lambda s: s.pop("chunks")), r"missing keys \['chunks'\]"),
    (lambda p: _edit(p, lambda s: s["spec"].update(palette=[[0, 0, 0]])), "bad model spec"),
])
def test_damaged_packages_give_one_clear_error(small_package, tmp_path, damage, message):
    copy = shutil.copytree(small_package, tmp_path / "damaged.ssovpkg")
    damage(copy)
    with pytest.raises(DataError, match=message):
        load_package(copy)


def _edit(pkg, change) -> None:
    sidecar = yaml.safe_load((pkg / SIDECAR_FILE).read_text())
    change(sidecar)
    (pkg / SIDECAR_FILE).write_text(yaml.safe_dump(sidecar))
