"""Model package: sidecar round trip, sha256 check, clear errors for damaged packages, backend selection."""

from __future__ import annotations

import shutil

import pytest
import yaml

from export.package import ONNX_FILE, SIDECAR_FILE, load_package
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


def test_tampered_onnx_is_refused(small_package, tmp_path):
    copy = shutil.copytree(small_package, tmp_path / "tampered.ssovpkg")
    data = bytearray((copy / ONNX_FILE).read_bytes())
    data[-10] ^= 0xFF
    (copy / ONNX_FILE).write_bytes(bytes(data))
    with pytest.raises(DataError, match="sha256 .* does not match the sidecar"):
        open_backend(copy)


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / SIDECAR_FILE).unlink(), "not a model package"),
    (lambda p: (p / ONNX_FILE).unlink(), "model.onnx missing"),
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
