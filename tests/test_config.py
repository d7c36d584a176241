"""Typed YAML config loading: every mistake names its key."""

from pathlib import Path

import pytest

from ssov_train.config import load_config, to_dict
from ssov_train.errors import ConfigError
from ssov_train.pipeline import SuperpointsStageConfig

REPO = Path(__file__).resolve().parents[1]
GOOD = """
dataset: {kind: sample, root: data/nuscenes_sample}
teacher: {format: ssov, root: runs/t, builtin: boxes}
output: runs/sp
projection: {occlusion: true, occlusion_radius_px: 4}
"""


def _load(tmp_path, text, overrides=None):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return load_config(SuperpointsStageConfig, p, overrides)


def test_good_config_is_typed(tmp_path):
    cfg = _load(tmp_path, GOOD)
    assert cfg.dataset.kind == "sample" and isinstance(cfg.dataset.root, Path)
    assert cfg.projection.occlusion_radius_px == 4.0 and isinstance(cfg.projection.occlusion_radius_px, float)
    assert cfg.projection.multi_camera == "vote"  # default
    assert to_dict(cfg)["teacher"]["builtin"] == "boxes"


@pytest.mark.parametrize("text, message", [
    (GOOD.replace("occlusion: true", "occlusoin: true"), "projection.occlusoin: unknown key (did you mean 'occlusion'?)"),
    (GOOD.replace("occlusion_radius_px: 4", "occlusion_radius_px: four"), "projection.occlusion_radius_px: expected a number"),
    (GOOD.replace("kind: sample", "kind: waymo"), "dataset.kind: 'waymo' is not one of"),
    (GOOD.replace("output: runs/sp\n", ""), "output: required key missing"),
    (GOOD.replace("occlusion: true", "occlusion: 1"), "projection.occlusion: expected true/false"),
    (GOOD.replace("occlusion_radius_px: 4", "occlusion_radius_px: -1"), "occlusion_radius_px must be > 0"),
    (GOOD.replace("format: ssov", "format: catseg"), "a built-in teacher writes the ssov format"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("dataset: [unclosed", "invalid YAML"),
])
def test_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, text)
    assert message in str(e.value)
    assert "cfg.yaml" in str(e.value)


def test_overrides_and_missing_file(tmp_path):
    cfg = _load(tmp_path, GOOD, {"dataset.split": "val", "projection.multi_camera": "last"})
    assert cfg.dataset.split == "val" and cfg.projection.multi_camera == "last"
    with pytest.raises(ConfigError, match="not found"):
        load_config(SuperpointsStageConfig, tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("superpoints_*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(SuperpointsStageConfig, path)
    assert cfg.output


def test_tuple_fields_are_typed_per_position():
    from dataclasses import dataclass

    from ssov_train.config import from_dict

    @dataclass
    class C:
        pair: tuple[str, float] = ("a", 1.0)
        many: tuple[int, ...] = ()

    c = from_dict(C, {"pair": ["x", 2], "many": [1, 2, 3]})
    assert c.pair == ("x", 2.0) and c.many == (1, 2, 3)
    with pytest.raises(ConfigError, match="pair: expected 2 items"):
        from_dict(C, {"pair": ["x"]})
    with pytest.raises(ConfigError, match=r"many\[1\]: expected an integer"):
        from_dict(C, {"many": [1, "two"]})
