"""The node's output cloud columns (ssov_ros/output_cloud.py), without ROS: hand-placed points, labels, scores,
intensities and colours, every expected value written out by hand."""

import numpy as np
import pytest

from ssov_ros.output_cloud import segmented_cloud, similarity_columns
from ssov_ros.pointcloud import Cloud, pack_cloud, rgb_packed

NAN = np.nan
# packed RViz colours of classes 0..3: 0x00RRGGBB with (R, G, B) = (0, 0, 0), (255, 0, 0), (0, 128, 255), (1, 2, 3)
PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 255], [1, 2, 3]], np.uint8)
RGB_BITS = [0x000000, 0xFF0000, 0x0080FF, 0x010203]


def cloud(xyz, intensity, height=1) -> Cloud:
    xyz = np.asarray(xyz, np.float32)
    return Cloud(xyz=xyz, intensity=np.asarray(intensity, np.float32), valid=np.isfinite(xyz).all(axis=1),
                 columns={}, height=height, width=len(xyz) // height, has_intensity=True)


# 5 points: #1 has a NaN, #3 is valid but out of range (so not in valid_idx either)
POINTS = cloud([[1, 2, 3], [NAN, 0, 0], [-4, 5.5, 0.25], [90, 0, 0], [0, -1, 2]], [10, 20, 30, 40, 250.5])
VALID = np.array([0, 2, 4])
LABELS = np.array([2, 1, 3], np.int64)  # as the Segmenter gives them
SCORES = np.array([0.5, 0.25, 0.75], np.float32)


def test_every_point_is_published_with_label_0_and_score_0_where_not_segmented():
    out = segmented_cloud(POINTS, VALID, LABELS, SCORES, rgb_packed(PALETTE), drop_invalid_points=False)
    cols = out.columns
    assert list(cols) == ["x", "y", "z", "intensity", "label", "score", "rgb"]  # the published field order
    np.testing.assert_array_equal(cols["x"], np.array([1, NAN, -4, 90, 0], np.float32))
    np.testing.assert_array_equal(cols["y"], np.array([2, 0, 5.5, 0, -1], np.float32))
    np.testing.assert_array_equal(cols["z"], np.array([3, 0, 0.25, 0, 2], np.float32))
    # the input's intensity as read, on every point (the model's scaled copy is never published)
    np.testing.assert_array_equal(cols["intensity"], np.array([10, 20, 30, 40, 250.5], np.float32))
    assert cols["label"].dtype == np.uint32 and cols["label"].tolist() == [2, 0, 1, 0, 3]
    assert cols["score"].dtype == np.float32 and cols["score"].tolist() == [0.5, 0, 0.25, 0, 0.75]
    assert cols["rgb"].dtype == np.float32
    assert cols["rgb"].view(np.uint32).tolist() == [RGB_BITS[c] for c in (2, 0, 1, 0, 3)]
    assert out.height == 1 and out.is_dense is False and out.num_points == 5


def test_dropping_invalid_points_keeps_the_segmented_ones_only():
    out = segmented_cloud(POINTS, VALID, LABELS, SCORES, rgb_packed(PALETTE), drop_invalid_points=True)
    cols = out.columns
    np.testing.assert_array_equal(np.stack([cols["x"], cols["y"], cols["z"]], 1),
                                  np.array([[1, 2, 3], [-4, 5.5, 0.25], [0, -1, 2]], np.float32))
    np.testing.assert_array_equal(cols["intensity"], np.array([10, 30, 250.5], np.float32))
    assert cols["label"].tolist() == [2, 1, 3] and cols["score"].tolist() == [0.5, 0.25, 0.75]
    assert cols["rgb"].view(np.uint32).tolist() == [0x0080FF, 0xFF0000, 0x010203]
    assert out.height == 1 and out.is_dense is True  # what is left is finite


def test_an_organised_cloud_keeps_its_rows_unless_points_are_dropped():
    grid = cloud([[1, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0], [5, 0, 0], [6, 0, 0]], [1, 2, 3, 4, 5, 6], height=2)
    everything = np.arange(6)
    labels = np.array([1, 1, 2, 2, 3, 3])
    out = segmented_cloud(grid, everything, labels, np.full(6, 0.5, np.float32), rgb_packed(PALETTE), False)
    assert out.height == 2 and out.is_dense is True and out.columns["label"].tolist() == [1, 1, 2, 2, 3, 3]
    dropped = segmented_cloud(grid, everything, labels, np.full(6, 0.5, np.float32), rgb_packed(PALETTE), True)
    assert dropped.height == 1 and dropped.is_dense is True
    # a NaN point keeps the rows (organised clouds publish every point) but the cloud is no longer dense
    holes = cloud([[1, 0, 0], [NAN, NAN, NAN], [3, 0, 0], [4, 0, 0]], [0, 0, 0, 0], height=2)
    out = segmented_cloud(holes, np.array([0, 2, 3]), np.array([1, 2, 3]), np.ones(3, np.float32),
                          rgb_packed(PALETTE), False)
    assert out.height == 2 and out.is_dense is False and out.columns["label"].tolist() == [1, 0, 2, 3]


@pytest.mark.parametrize("drop, expected", [(False, [0.75, 0, -0.5, 0, 0.125]), (True, [0.75, -0.5, 0.125])])
def test_the_query_cloud_scores_unsegmented_points_0(drop, expected):
    out = segmented_cloud(POINTS, VALID, LABELS, SCORES, rgb_packed(PALETTE), drop_invalid_points=drop)
    cols = similarity_columns(out, VALID, np.array([0.75, -0.5, 0.125], np.float32))
    assert list(cols) == ["x", "y", "z", "similarity"]
    assert cols["similarity"].dtype == np.float32 and cols["similarity"].tolist() == expected
    for c in "xyz":
        np.testing.assert_array_equal(cols[c], out.columns[c])


def test_the_output_layout_is_the_documented_point_type():
    """x, y, z, intensity float32, label uint32, score float32, rgb float32 (PCL's packed RGB): PointField
    datatypes 7, 7, 7, 7, 6, 7, 7 at offsets 0, 4, ..., 24, point_step 28 (sensor_msgs/PointField)."""
    out = segmented_cloud(POINTS, VALID, LABELS, SCORES, rgb_packed(PALETTE), drop_invalid_points=False)
    fields, step, data = pack_cloud(out.columns)
    assert fields == [("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("intensity", 12, 7, 1), ("label", 16, 6, 1),
                      ("score", 20, 7, 1), ("rgb", 24, 7, 1)]
    assert step == 28 and len(data) == 5 * 28
    # the first point, byte for byte: 1.0, 2.0, 3.0, 10.0 (float32 little-endian), label 2, 0.5, colour 0x0080FF
    assert data[:28].hex() == ("0000803f" "00000040" "00004040" "00002041" "02000000" "0000003f" "ff800000")
