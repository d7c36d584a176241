"""Fixtures for the export tests: a real sweep, one small synthetic scan, small random-weight checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ssov_train.data.sample import SampleReader

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "models" / "ssov_synthetic_minkunet34c_w025.pt"


@pytest.fixture(scope="session")
def real_sweep() -> tuple[np.ndarray, np.ndarray]:
    reader = SampleReader(REPO / "data" / "nuscenes_sample")
    frame = reader.load(reader.split_tokens()[0])
    return frame.points, frame.intensity


@pytest.fixture(scope="session")
def synthetic_world(tmp_path_factory) -> tuple[Path, str, str]:
    """A one-frame synthetic world (about 1.5 s to generate): (dataroot, keyframe token, its split)."""
    from ssov_train.data.nuscenes import NuScenesReader
    from ssov_train.data.synthetic import generate_world

    root = generate_world(tmp_path_factory.mktemp("export_world") / "world", name="tiny", num_scenes=1,
                          frames_per_scene=1, seed=3, image_width=160, image_height=90, workers=1)
    reader = NuScenesReader(root, version="v1.0-tiny")
    split, token = next((s, t) for s in ("train", "val") for t in reader.split_tokens(s))
    return root, token, split


@pytest.fixture(scope="session")
def synthetic_sweep(synthetic_world) -> tuple[np.ndarray, np.ndarray]:
    from ssov_train.data.nuscenes import NuScenesReader

    root, token, _ = synthetic_world
    frame = NuScenesReader(root, version="v1.0-tiny").load(token)
    return frame.points, frame.intensity


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics, so BN folding is actually exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def make_checkpoint(path: Path, arch: str = "MinkUNet18", width: float = 0.125, stage: str = "annotation_free",
                    feature_dim: int = 8, seed: int = 0) -> Path:
    """A small random-weight ssov-checkpoint (a class model, or a TMP feature model for stage='pretrain')."""
    from ssov_train.models import MinkUNet, MinkUNetConfig
    from ssov_train.training.checkpoint import save_checkpoint
    from ssov_train.vocab import load_dictionary

    torch.manual_seed(seed)
    d = load_dictionary("nuscenes")
    pretrain = stage == "pretrain"
    cfg = MinkUNetConfig(arch=arch, width=width, out_channels=feature_dim if pretrain else d.num_classes,
                         normalize_features=pretrain)
    model = MinkUNet(cfg)
    randomize_batchnorm(model, seed)
    return save_checkpoint(path, {
        "stage": stage, "model": {f: getattr(cfg, f) for f in cfg.__dataclass_fields__},
        "voxel": {"mode": "cylindrical", "size": [0.1, 1.0, 0.1]}, "input_fields": ["intensity"],
        "class_names": d.class_names, "palette": d.palette.tolist(), "vocabulary": d.name,
        "feature_dim": feature_dim if pretrain else None, "text_embeddings": None,
        "state_dict": model.state_dict()})


@pytest.fixture(scope="session")
def checkpoint_factory():
    return make_checkpoint


@pytest.fixture(scope="session")
def demo_checkpoint() -> Path:
    return DEMO


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.pt")


@pytest.fixture(scope="session")
def small_package(tmp_path_factory, small_checkpoint) -> Path:
    from ssov_export.onnx_export import export_package

    out, parity = export_package(small_checkpoint, tmp_path_factory.mktemp("pkg") / "small.ssovpkg")
    assert parity is not None and parity.ok, parity
    return out


@pytest.fixture(scope="session")
def demo_package(tmp_path_factory):
    """The shipped demo model exported once per session: (package, parity on the real sample)."""
    from ssov_export.onnx_export import export_package

    return export_package(DEMO, tmp_path_factory.mktemp("pkg") / "demo.ssovpkg")
