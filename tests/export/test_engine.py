"""TensorRT engine logic that needs no TensorRT: cache key, rebuild decisions, profiles, ONNX readiness."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest

from ssov_export import engine as eng
from ssov_export.kernel_maps import build_kernel_maps, input_names
from ssov_export.package import load_package
from ssov_train.errors import DataError
from ssov_train.geometry.voxelize import voxelize

GPU = ("10.13.3", "Orin", "8.7")


@pytest.fixture(scope="module")
def pkg(small_package):
    return load_package(small_package)


def test_cache_key_changes_with_everything_an_engine_depends_on(pkg):
    key = eng.make_key(pkg, *GPU, "fp16")
    assert key.file_stem.startswith(pkg.onnx_sha256[:12]) and "trt10.13.3_orin_sm8.7_fp16" in key.file_stem
    variants = [eng.make_key(pkg, "10.14.1", "Orin", "8.7", "fp16"), eng.make_key(pkg, "10.13.3", "RTX 4090", "8.9",
                "fp16"), eng.make_key(pkg, "10.13.3", "Orin", "8.6", "fp16"), eng.make_key(pkg, *GPU, "fp32"),
                dataclasses.replace(key, onnx_sha256="0" * 64), dataclasses.replace(key, profile_sha256="1" * 64)]
    assert len({key.file_stem, *(v.file_stem for v in variants)}) == 7
    with pytest.raises(DataError, match="precision"):
        eng.make_key(pkg, *GPU, "int8")


def test_rebuild_decisions(pkg, tmp_path):
    key = eng.make_key(pkg, *GPU, "fp16")
    path = eng.engine_path(pkg, key, tmp_path)
    assert eng.decide(path, key) == (True, f"no cached engine at {path}")
    path.write_bytes(b"serialized engine")
    eng.write_record(path, key, eng.derive_profiles(pkg), 12.5)
    assert eng.decide(path, key)[0] is False
    rebuild, why = eng.decide(path, dataclasses.replace(key, tensorrt_version="10.14.1"))
    assert rebuild and "tensorrt_version='10.13.3', now '10.14.1'" in why
    rebuild, why = eng.decide(path, dataclasses.replace(key, gpu_name="Thor"))
    assert rebuild and "gpu_name" in why
    path.write_bytes(b"another engine")
    rebuild, why = eng.decide(path, key)
    assert rebuild and "does not match its record" in why
    eng.record_path(path).write_text("{not json")
    assert eng.decide(path, key) == (True, f"engine record {eng.record_path(path)} is unreadable")


def test_profiles_cover_every_input_and_the_sample(pkg, real_sweep):
    profiles = eng.derive_profiles(pkg)
    assert list(profiles) == ["features", *input_names()]
    for name, (lo, opt, hi) in profiles.items():
        assert all(a <= b <= c for a, b, c in zip(lo, opt, hi)), name
    v_min, v_opt, v_max = pkg.profile["num_voxels"]
    assert profiles["features"] == ((v_min, 1), (v_opt, 1), (v_max, 1))
    assert profiles["subm0_in"][0][1] == pkg.chunks["subm0"]  # chunk length is static
    xyz, intensity = real_sweep
    vox = voxelize(xyz, pkg.spec.voxel, features=intensity)
    feeds = {"features": vox.features, **build_kernel_maps(vox.coords, pkg.chunks).inputs()}
    eng.check_shapes(profiles, feeds)  # the real sweep fits
    # opt shapes are the sample's own (the profile's opt voxel count is the sample's)
    assert profiles["subm0_in"][1] == feeds["subm0_in"].shape
    too_big = dict(feeds, features=np.zeros((v_max + 1, 1), np.float32))
    with pytest.raises(DataError, match="input 'features' has shape"):
        eng.check_shapes(profiles, too_big)


def test_onnx_readiness_checks(pkg):
    model = onnx.load(str(pkg.onnx_path))
    assert eng.check_onnx(model) == []
    # the package's cpu graph is onnxruntime-only: its summing ScatterND is what TensorRT cannot parse
    assert "ScatterND" in " ".join(eng.check_onnx(onnx.load(str(pkg.cpu_onnx_path))))
    model.graph.input[1].type.tensor_type.elem_type = onnx.TensorProto.INT64
    model.graph.node.append(onnx.helper.make_node("ScatterND", ["a", "b", "c"], ["d"], reduction="add"))
    model.opset_import[0].version = 11
    problems = " | ".join(eng.check_onnx(model))
    assert "opset 11" in problems and "ScatterND" in problems and "int32" in problems


def test_trtexec_equivalent(pkg):
    cmd = eng.trtexec_command(pkg, "fp16", "demo.engine")
    assert cmd.startswith(f"trtexec --onnx={pkg.onnx_path} --saveEngine=demo.engine --fp16")
    for flag in ("--minShapes=", "--optShapes=", "--maxShapes="):
        shapes = cmd.split(flag)[1].split(" ")[0].split(",")
        assert [s.split(":")[0] for s in shapes] == ["features", *input_names()]
    assert "--fp16" not in eng.trtexec_command(pkg, "fp32")


def load_bench_clouds():
    """bench/clouds.py (dense-sensor clouds from the real sweep), the scale bench's generator."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "clouds.py"
    spec = importlib.util.spec_from_file_location("bench_clouds", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_profile_admits_a_128_beam_scan(pkg, real_sweep):
    """The export's default profile covers a 128-beam x 2048-column scan; the former default (4x the sample's
    voxels) refused a real 128-beam sweep (93,122 voxels, issue 14)."""
    v_min, v_opt, v_max = pkg.profile["num_voxels"]
    assert (v_min, v_max) == (1024, eng.SENSOR_MAX_POINTS) == (1024, 128 * 2048) and v_opt < 20_000
    xyz, intensity = load_bench_clouds().dense_cloud(*real_sweep, eng.SENSOR_MAX_POINTS)  # 262,144 points
    vox = voxelize(xyz, pkg.spec.voxel, features=intensity)
    assert vox.num_voxels > 93_122
    feeds = {"features": vox.features, **build_kernel_maps(vox.coords, pkg.chunks).inputs()}
    eng.check_shapes(eng.derive_profiles(pkg), feeds)  # every input fits
    old = dataclasses.replace(pkg, sidecar={**pkg.sidecar, "profile": {**pkg.profile,
                                                                        "num_voxels": [v_min, v_opt, 4 * v_opt]}})
    with pytest.raises(DataError, match="does not fit the TensorRT profile"):
        eng.check_shapes(eng.derive_profiles(old), feeds)
    # the bound is points: no single-return scan of that sensor can have more voxels than this
    assert eng.default_profile(v_opt) == (1024, v_opt, 128 * 2048)
    assert eng.default_profile(500, max_voxels=400) == (500, 500, 500)
