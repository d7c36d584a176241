"""The voxel budget of dense sensors (Segmenter max_voxels, voxelize.nearest_voxels): the network sees the
``max_voxels`` voxels nearest the sensor and nothing else changes for the points it keeps."""

from pathlib import Path

import numpy as np
import pytest

from ssov_train.afi import AFIConfig
from ssov_train.data.sample import SampleReader
from ssov_train.errors import ConfigError
from ssov_train.geometry.voxelize import VoxelConfig, nearest_voxels, voxelize
from ssov_train.inference import Segmenter, open_backend

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "models" / "ssov_synthetic_minkunet34c_w025.pt"


@pytest.fixture(scope="module")
def sweep(sample_dir):
    reader = SampleReader(sample_dir)
    frame = reader.load(reader.split_tokens()[0])
    return frame.points, frame.intensity


def test_nearest_voxels_keeps_the_nearest_and_their_points(sweep):
    xyz, intensity = sweep
    vox = voxelize(xyz, VoxelConfig(), features=intensity)
    cap = 9000
    small, kept = nearest_voxels(vox, xyz, cap)
    assert small.num_voxels == cap < vox.num_voxels
    # brute force: a voxel's range is its first point's; every kept voxel is at most as far as every dropped one
    rng = np.hypot(xyz[vox.voxel_to_point, 0], xyz[vox.voxel_to_point, 1])
    absolute = vox.coords.astype(np.int64) + vox.offset
    key = lambda c: set(map(tuple, c))  # noqa: E731
    kept_voxels = key(small.coords.astype(np.int64) + small.offset)
    is_kept = np.array([tuple(c) in kept_voxels for c in absolute])
    assert is_kept.sum() == cap and rng[is_kept].max() <= rng[~is_kept].min()
    # exactly the points of kept voxels, each mapped to its own voxel, features of the representative point
    np.testing.assert_array_equal(kept, np.flatnonzero(is_kept[vox.point_to_voxel]))
    np.testing.assert_array_equal(small.coords[small.point_to_voxel] + small.offset, absolute[vox.point_to_voxel][kept])
    np.testing.assert_array_equal(small.features[:, 0], intensity[kept][small.voxel_to_point])
    assert np.all(np.diff(small.coords[:, 0].astype(np.int64) * 10**12 + small.coords[:, 1] * 10**6
                          + small.coords[:, 2]) > 0)  # still sorted, as the kernel maps expect
    same, all_points = nearest_voxels(vox, xyz, vox.num_voxels)
    assert same is vox and len(all_points) == len(xyz)
    with pytest.raises(ConfigError, match="max_voxels"):
        nearest_voxels(vox, xyz, 0)


def test_segmenter_budget_segments_the_near_points_as_if_alone(sweep):
    """With the budget, kept points get exactly the labels the same model gives the kept points alone (the grid
    is aligned, so removing far voxels changes nothing for the others but their receptive field), and the
    others label 0 / score 0."""
    xyz, intensity = sweep
    backend = open_backend(DEMO)
    cap = 12000
    capped = Segmenter(backend, afi=AFIConfig(), max_voxels=cap).segment(xyz, intensity)
    vox = voxelize(xyz, backend.spec.voxel, features=intensity)
    _, kept = nearest_voxels(vox, xyz, cap)
    alone = Segmenter(backend, afi=AFIConfig()).segment(xyz[kept], intensity[kept])
    assert capped.num_voxels == cap and alone.num_voxels == cap
    dropped = np.setdiff1d(np.arange(len(xyz)), kept)
    assert len(dropped) > 0 and np.all(capped.labels[dropped] == 0) and np.all(capped.scores[dropped] == 0)
    np.testing.assert_array_equal(capped.labels[kept], alone.labels)
    np.testing.assert_allclose(capped.scores[kept], alone.scores, rtol=1e-6)
    assert np.all(capped.labels[kept] > 0)
    # a budget the scan does not reach changes nothing
    loose = Segmenter(backend, afi=AFIConfig(), max_voxels=vox.num_voxels).segment(xyz, intensity)
    full = Segmenter(backend, afi=AFIConfig()).segment(xyz, intensity)
    np.testing.assert_array_equal(loose.labels, full.labels)
    with pytest.raises(ConfigError, match="max_voxels"):
        Segmenter(backend, max_voxels=0)
