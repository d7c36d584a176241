"""The node's parameters as data (ssov_ros.params, ROS-free): the table, the params file, validation, model paths."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from ssov_ros import params
from ssov_ros.params import (NodeConfig, flat_defaults, from_flat, load_params_file, parameter_table,
                             resolve_model_path, ros_values, unknown_parameters)
from ssov_train.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DEFAULT = "models/ssov_synthetic_minkunet34c_w025.ssovpkg"
PY_TYPES = {"bool": bool, "integer": int, "double": float, "string": str}


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_params_file_lists_every_parameter_with_its_default():
    doc = yaml.safe_load((REPO / "config" / "ssov_node.yaml").read_text())
    in_file = _leaves(doc["/**"]["ros__parameters"])
    table = {spec.name: spec for spec in parameter_table()}
    assert list(in_file) == list(table)  # every one, in declaration order
    for name, value in in_file.items():
        default = table[name].default
        assert (math.isnan(value) and math.isnan(default)) if isinstance(default, float) and math.isnan(default) \
            else value == default, name
    cfg = load_params_file(REPO / "config" / "ssov_node.yaml")
    assert flat_defaults(cfg) == flat_defaults(NodeConfig())  # .nan reads as "unset" (None)
    assert cfg.afi.ground_z_max is None and cfg.afi_config().ground_z_max == -1.4  # the nuScenes preset's


def test_table_is_typed_described_and_within_its_ranges():
    table = parameter_table()
    assert len({s.name for s in table}) == len(table) == len(flat_defaults())
    for spec in table:
        assert spec.description, spec.name
        if spec.type.endswith("_array"):
            item = str if spec.type == "string_array" else float
            assert isinstance(spec.default, list) and all(isinstance(v, item) for v in spec.default), spec.name
        else:  # exactly the ROS type: rclpy infers the declared type from the value (1 is not 1.0)
            assert type(spec.default) is PY_TYPES[spec.type], spec.name
        if spec.min is not None and not math.isnan(spec.default):
            assert spec.min <= spec.default <= spec.max, spec.name
        if spec.choices:
            assert spec.type == "string" and spec.default in spec.choices
        if spec.unset:  # the NaN sentinel of an optional number
            assert spec.type == "double" and math.isnan(spec.default)
    runtime = {s.name for s in table if not s.read_only}
    # what a user tunes on a running node (issue 12): thresholds, ranges, AFI and history, overlay options
    assert {"input.max_range", "input.intensity_scale", "afi.enabled", "afi.preset", "temporal.history",
            "temporal.decay", "cameras.point_radius", "cameras.occlusion", "output.max_processing_ms"} <= runtime
    # what start-up fixes (subscriptions, the model, the worker thread, timers): read-only
    assert not runtime & {"model.path", "model.backend", "model.threads", "cameras.names", "cameras.transport",
                          "temporal.pose_source", "pipeline.enabled", "output.diagnostics_period_s"}


def test_params_are_typed_and_validated():
    assert from_flat({"afi.enabled": False}).afi_config() is None
    kitti = from_flat({"afi.preset": "kitti", "afi.ground_z_max": -1.0}).afi_config()
    assert kitti.dictionary == "semantickitti" and kitti.ground_z_max == -1.0
    assert from_flat({"afi.ground_z_max": math.nan}).afi.ground_z_max is None  # ROS's "unset"
    assert math.isnan(ros_values(NodeConfig())["afi.ground_z_max"])
    with pytest.raises(ConfigError, match="temporal.decay"):
        from_flat({"temporal.decay": "fast"})
    with pytest.raises(ConfigError, match="unknown"):
        from_flat({"temporal.histroy": 2})
    with pytest.raises(ConfigError, match="7 numbers per camera"):
        from_flat({"cameras.names": ["CAM_FRONT"], "cameras.lidar_to_camera": [0.0] * 6})
    with pytest.raises(ConfigError, match=r"input.max_range must be in \[0.1, 100000\], got 0.0"):
        from_flat({"input.max_range": 0.0})
    with pytest.raises(ConfigError, match=r"temporal.history must be in \[0, 100\], got -1"):
        from_flat({"temporal.history": -1})
    with pytest.raises(ConfigError, match="afi.input_min_range must be in"):
        from_flat({"afi.input_min_range": -2.0})
    with pytest.raises(ConfigError, match="ground_ring_min < ground_ring_max"):
        from_flat({"afi.ground_ring_min": 9.0})  # past the preset's ring_max (5 m)
    with pytest.raises(ConfigError, match="not one of"):
        from_flat({"temporal.pose_source": "gps"})


def test_unknown_parameters_are_named_with_a_close_match():
    assert unknown_parameters(["afi.enabled", "use_sim_time", "afi.enabeld", "afii.enabled", "zzz"]) == [
        "afi.enabeld (did you mean afi.enabled?)", "afii.enabled (did you mean afi.enabled?)", "use_sim_time",
        "zzz"]


def _install(prefix: Path, files: dict[str, bytes]) -> None:
    """A stand-in colcon install prefix: the ament index marker plus files under share/ssov_ros."""
    marker = prefix / "share" / "ament_index" / "resource_index" / "packages" / "ssov_ros"
    marker.parent.mkdir(parents=True)
    marker.write_text("")
    for rel, data in files.items():
        path = prefix / "share" / "ssov_ros" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_model_path_resolution_share_first_then_as_given(tmp_path, monkeypatch):
    pytest.importorskip("ament_index_python")
    assert NodeConfig().model.path == DEFAULT
    prefix, cwd = tmp_path / "install", tmp_path / "cwd"
    (cwd / "models").mkdir(parents=True)
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(params, "REPO", tmp_path / "site-packages")  # an install: no source tree to fall back to
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    _install(prefix, {"models/ssov_synthetic_minkunet34c_w025.pt": b"ckpt", "models/mine.pt": b"share"})
    share = prefix / "share" / "ssov_ros"
    (cwd / "models" / "mine.pt").write_bytes(b"cwd")
    (cwd / "models" / "only_here.pt").write_bytes(b"cwd")
    assert resolve_model_path("models/mine.pt") == share / "models" / "mine.pt"  # the share directory first
    assert resolve_model_path("models/only_here.pt") == cwd / "models" / "only_here.pt"  # then as given
    assert resolve_model_path(str(cwd / "models" / "mine.pt")) == cwd / "models" / "mine.pt"  # absolute: as is
    # the default package was not built (no `make export`): its installed checkpoint runs instead
    assert resolve_model_path(DEFAULT) == share / "models" / "ssov_synthetic_minkunet34c_w025.pt"
    package = share / DEFAULT
    package.mkdir()
    (package / "model.yaml").write_text("format: ssov-model-package\n")
    assert resolve_model_path(DEFAULT) == package
    assert resolve_model_path(f"{DEFAULT}/model.yaml") == package / "model.yaml"
    # any other missing package is an error that names the export command (full paths outside the cwd) ...
    with pytest.raises(ConfigError, match=f"--checkpoint {share}/models/mine.pt --out {share}/models/mine.ssovpkg"):
        resolve_model_path("models/mine.ssovpkg")
    with pytest.raises(ConfigError, match="--checkpoint models/only_here.pt --out models/only_here.ssovpkg"):
        resolve_model_path("models/only_here.ssovpkg")
    # ... or lists where it looked; site-packages is never one of them
    with pytest.raises(ConfigError, match="not found .looked in") as err:
        resolve_model_path("models/none.pt")
    assert str(share) in str(err.value) and str(cwd) in str(err.value) and "site-packages" not in str(err.value)


def test_model_path_resolution_in_a_source_tree(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    assert resolve_model_path("models/ssov_synthetic_minkunet34c_w025.pt") == \
        REPO / "models" / "ssov_synthetic_minkunet34c_w025.pt"
    assert resolve_model_path(DEFAULT).parent == REPO / "models"  # the package if exported, else its checkpoint
