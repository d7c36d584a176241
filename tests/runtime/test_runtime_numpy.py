"""What the runtime computes in numpy instead of the training stack / scipy: the network input features and the
overlay's z-buffer neighbourhood minimum."""

import numpy as np
import pytest

from ssov_train.errors import ConfigError
from ssov_train.features import INPUT_FEATURES, network_input, point_features
from ssov_train.geometry.projection import min_filter_3x3


def test_point_features_by_hand():
    assert INPUT_FEATURES == ("intensity", "intensity+1")
    assert point_features(np.array([0.5, 1.0]), "intensity").tolist() == [[0.5], [1.0]]
    assert point_features(np.array([0.5, 1.0]), "intensity+1").tolist() == [[1.5], [2.0]]
    both = network_input(np.array([3, 0], np.uint8), ("intensity+1", "intensity"))
    assert both.dtype == np.float32 and both.tolist() == [[4.0, 3.0], [1.0, 0.0]]
    with pytest.raises(ConfigError, match="'reflectivity' is not one of"):
        point_features(np.zeros(2), "reflectivity")


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
