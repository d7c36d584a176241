"""What the runtime computes in numpy instead of the training stack / scipy: the network input features and the
overlay's z-buffer neighbourhood minimum."""

import numpy as np
import pytest

from ssov_train.errors import ConfigError
from ssov_train.features import (INPUT_FEATURES, IntensityNormalization, feature_channels, is_scale_invariant,
                                 missing_intensity_reason, network_input, point_features)
from ssov_train.geometry.projection import min_filter_3x3


def test_point_features_by_hand():
    assert INPUT_FEATURES == ("intensity", "intensity+1", "normalized_intensity")
    assert point_features(np.array([0.5, 1.0]), "intensity").tolist() == [[0.5], [1.0]]
    assert point_features(np.array([0.5, 1.0]), "intensity+1").tolist() == [[1.5], [2.0]]
    both = network_input(np.array([3, 0], np.uint8), ("intensity+1", "intensity"))
    assert both.dtype == np.float32 and both.tolist() == [[4.0, 3.0], [1.0, 0.0]]
    with pytest.raises(ConfigError, match="'reflectivity' is not one of"):
        point_features(np.zeros(2), "reflectivity")


def test_normalized_intensity_by_hand():
    # 101 values 0..100: the 99th percentile (linear interpolation) is 99; 100 / 99 stays under the clip 1.5
    values = np.arange(101, dtype=np.float32)
    out = point_features(values, "normalized_intensity", IntensityNormalization(percentile=99.0, clip=1.5))
    assert out.shape == (101, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], values / 99.0, rtol=1e-6)
    assert (out[:, 1] == 1).all()
    # a clip of 1: everything above the percentile reads 1
    clipped = point_features(values, "normalized_intensity", IntensityNormalization(percentile=99.0, clip=1.0))
    assert clipped[100, 0] == 1.0 and clipped[99, 0] == 1.0 and clipped[50, 0] == pytest.approx(50 / 99)
    # negative and non-finite values read as 0
    odd = point_features(np.array([-5.0, np.nan, 2.0, 4.0, np.inf], np.float32), "normalized_intensity",
                         IntensityNormalization(percentile=100.0, clip=1.0))
    assert odd[:, 0].tolist() == [0.0, 0.0, 0.5, 1.0, 0.0]


@pytest.mark.parametrize("scale", [255.0, 65535.0, 1 / 255.0])
def test_normalized_intensity_does_not_depend_on_the_sensor_scale(scale):
    """The same cloud reported on 0..1, 0..255 or 0..65535 gives the network the same input."""
    rng = np.random.default_rng(3)
    intensity = rng.gamma(2.0, 0.15, 5000).astype(np.float32)  # a 0..1-ish reflectivity with a long tail
    norm = IntensityNormalization()
    a = network_input(intensity, ["normalized_intensity"], norm)
    b = network_input((intensity.astype(np.float64) * scale).astype(np.float32), ["normalized_intensity"], norm)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert a[:, 0].max() == pytest.approx(norm.clip)  # the long tail is clipped
    assert np.mean(a[:, 0] <= 1.0) == pytest.approx(0.99, abs=0.002)  # 99% at or below the percentile


@pytest.mark.parametrize("intensity, reason", [
    (None, "no intensity field"), (np.zeros(10), "constant intensity (0)"), (np.full(10, 7.0), "constant intensity (7)"),
    (np.full(10, np.nan), "no finite intensity"), (np.r_[np.zeros(999), 5.0], "intensity 0 on more than 1%")])
def test_clouds_without_usable_intensity_take_the_geometry_only_input(intensity, reason):
    assert missing_intensity_reason(intensity).startswith(reason)
    out = network_input(intensity, ["normalized_intensity"], IntensityNormalization(), num_points=10)
    assert (out == 0).all()  # "intensity present" is 0 and so is the intensity column
    # a raw-intensity model reads a missing field as zeros, as before
    assert (network_input(None, ["intensity"], num_points=4) == 0).all()


def test_feature_channels_and_scale_invariance():
    assert feature_channels(["intensity"]) == 1 and feature_channels(["normalized_intensity"]) == 2
    assert is_scale_invariant(["normalized_intensity"]) and not is_scale_invariant(["intensity"])
    with pytest.raises(ConfigError, match="needs its input_normalization"):
        point_features(np.ones(3), "normalized_intensity")
    with pytest.raises(ConfigError, match="percentile in"):
        IntensityNormalization(percentile=10.0).check()


def test_training_and_the_model_spec_share_the_features():
    """One home: training's dataset and inference's ModelSpec use the same function."""
    import ssov_train.features as features
    from ssov_train.inference import spec

    assert spec.network_input is features.network_input
    training = pytest.importorskip("ssov_train.training.data")  # needs torch
    assert training.point_features is features.point_features


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (4, 1), (7, 9), (30, 41)])
def test_min_filter_is_the_brute_force_3x3_minimum(shape):
    rng = np.random.default_rng(sum(shape))
    grid = rng.uniform(0.0, 50.0, shape).astype(np.float32)
    grid[rng.random(shape) < 0.6] = np.inf  # most cells of a sparse z-buffer are empty
    expected = np.full(shape, np.inf, np.float32)
    for r in range(shape[0]):
        for c in range(shape[1]):
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if 0 <= r + dr < shape[0] and 0 <= c + dc < shape[1]:
                        expected[r, c] = min(expected[r, c], grid[r + dr, c + dc])
    out = min_filter_3x3(grid)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
