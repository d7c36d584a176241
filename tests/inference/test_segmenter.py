"""The shared inference path: spec from the model file, torch backend, segmenter with and without AFI."""

from pathlib import Path

import numpy as np
import pytest

from ssov_train.data.sample import SampleReader
from ssov_train.errors import ConfigError, DataError
from ssov_train.inference import ModelSpec, Segmenter, open_backend
from ssov_train.inference.backends import register_backend, available_backends
from ssov_train.afi import AFIConfig, TemporalConfig

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "models" / "ssov_synthetic_minkunet34c_w025.pt"


@pytest.fixture(scope="module")
def backend():
    return open_backend(DEMO)


@pytest.fixture(scope="module")
def sweep():
    reader = SampleReader(REPO / "data" / "nuscenes_sample")
    frame = reader.load(reader.split_tokens()[0])
    return frame.points, frame.intensity


def test_spec_comes_from_the_model_file(backend):
    spec = backend.spec
    assert backend.name == "torch"
    assert spec.class_names[0] == "ignore" and spec.num_classes == 17 and spec.palette.shape == (17, 3)
    assert spec.voxel.mode == "cylindrical" and spec.voxel.size == (0.1, 1.0, 0.1)
    # the shipped model takes per-cloud normalised intensity (+ "intensity present"), its normalisation in the file
    assert spec.input_fields == ("normalized_intensity",) and spec.in_channels == 2 and spec.scale_invariant
    assert (spec.input_normalization.percentile, spec.input_normalization.clip) == (99.0, 1.5)
    assert ModelSpec.from_dict(spec.to_dict()).to_dict() == spec.to_dict()


def test_segment_real_sweep_matches_direct_model_call(backend, sweep):
    import torch

    from ssov_train.geometry.voxelize import voxelize

    xyz, intensity = sweep
    result = Segmenter(backend).segment(xyz, intensity, keep_probs=True)
    assert result.labels.shape == (len(xyz),) and result.labels.min() >= 1
    assert result.num_voxels == 15947
    np.testing.assert_allclose(result.probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(result.labels, result.probs.argmax(1))
    # the same network called directly on the same voxels gives the same labels
    # its input by hand: intensity over the sweep's 99th percentile, clipped to 1.5, and a column of ones
    by_hand = np.c_[np.minimum(intensity / np.percentile(intensity.astype(np.float64), 99), 1.5),
                    np.ones(len(intensity))].astype(np.float32)
    vox = voxelize(xyz, backend.spec.voxel, features=by_hand)
    with torch.no_grad():
        logits = backend.model(torch.from_numpy(vox.features), torch.from_numpy(vox.coords),
                               torch.zeros(vox.num_voxels, dtype=torch.int32), list(vox.spatial_shape), 1)
    logits[:, 0] = -1e6
    np.testing.assert_array_equal(result.labels, logits.argmax(1).numpy()[vox.point_to_voxel])
    assert set(result.timings_ms) == {"voxelize", "network", "softmax"}


def test_afi_changes_labels_and_keeps_class_zero_out(backend, sweep):
    xyz, intensity = sweep
    plain = Segmenter(backend).segment(xyz, intensity)
    refined = Segmenter(backend, afi=AFIConfig()).segment(xyz, intensity)
    assert refined.labels.min() >= 1 and "afi" in refined.timings_ms
    changed = np.mean(refined.labels != plain.labels)
    assert 0 < changed < 0.5


def test_afi_is_fed_the_labels_by_default_and_the_probabilities_on_request(backend, sweep):
    """The reference feeds AFI one-hot labels; the segmenter does by default, and the softmax when asked."""
    from ssov_train.afi import afi_refine

    xyz, intensity = sweep
    probs = Segmenter(backend).segment(xyz, intensity, keep_probs=True).probs
    c = backend.spec.num_classes
    one_hot = np.eye(c, dtype=np.float32)[probs.argmax(1)]
    by_labels = Segmenter(backend, afi=AFIConfig()).segment(xyz, intensity)
    by_probs = Segmenter(backend, afi=AFIConfig(), afi_input="probabilities").segment(xyz, intensity)
    np.testing.assert_array_equal(by_labels.labels, afi_refine(xyz, one_hot, AFIConfig(), num_classes=c)[0])
    np.testing.assert_array_equal(by_probs.labels, afi_refine(xyz, probs, AFIConfig(), num_classes=c)[0])
    assert not np.array_equal(by_labels.labels, by_probs.labels)
    with pytest.raises(ConfigError, match="AFI input 'logits'"):
        Segmenter(backend, afi=AFIConfig(), afi_input="logits")


def test_streaming_afi_uses_the_pose(backend, sweep):
    xyz, intensity = sweep
    alone = Segmenter(backend, afi=AFIConfig()).segment(xyz, intensity)
    seg = Segmenter(backend, afi=AFIConfig(), temporal=TemporalConfig(history=2))
    seg.segment(xyz, intensity, pose=np.eye(4))
    voted = seg.segment(xyz, intensity, pose=np.eye(4))
    assert not np.allclose(voted.scores, alone.scores)  # the previous frame voted
    seg.reset()
    seg.segment(xyz, intensity, pose=np.eye(4))
    far = np.eye(4)
    far[0, 3] = 1000.0  # a pose that puts the previous frame out of reach: no votes, per-frame result
    unmatched = seg.segment(xyz, intensity, pose=far)
    np.testing.assert_array_equal(unmatched.labels, alone.labels)
    np.testing.assert_allclose(unmatched.scores, alone.scores, rtol=1e-5)


def test_warm_up_leaves_no_history_behind(backend, sweep):
    """The node warms up on a synthetic scan at start-up: the first real frame must not be voted on by it."""
    xyz, intensity = sweep
    fresh = Segmenter(backend, afi=AFIConfig(), temporal=TemporalConfig(history=2)).segment(xyz, intensity,
                                                                                             pose=np.eye(4))
    seg = Segmenter(backend, afi=AFIConfig(), temporal=TemporalConfig(history=2))
    ms = seg.warm_up()
    assert ms > 0 and not seg.afi._history
    first = seg.segment(xyz, intensity, pose=np.eye(4))
    np.testing.assert_array_equal(first.labels, fresh.labels)
    np.testing.assert_allclose(first.scores, fresh.scores, rtol=1e-5)


def test_bad_inputs_name_the_problem(backend):
    seg = Segmenter(backend)
    with pytest.raises(DataError, match="empty"):
        seg.segment(np.zeros((0, 3), np.float32))
    with pytest.raises(DataError, match="NaN"):
        seg.segment(np.array([[np.nan, 0, 0], [1, 2, 3]], np.float32))
    with pytest.raises(DataError, match="intensity"):
        seg.segment(np.ones((4, 3), np.float32), np.ones(3, np.float32))


def test_missing_model_and_unknown_backend(tmp_path):
    with pytest.raises(DataError, match="model file not found"):
        open_backend(tmp_path / "nope.pt")
    with pytest.raises(ConfigError, match="unknown inference backend"):
        open_backend(DEMO, backend="nope")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises((DataError, ConfigError), match="bad.pt"):
        open_backend(bad)
    assert {"torch", "onnxruntime", "tensorrt"} <= set(available_backends())
