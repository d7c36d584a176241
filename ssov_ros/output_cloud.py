"""The node's output clouds as numpy columns, ROS-free: what ~/output/points and ~/output/query_points carry.

The node (ssov_ros/node.py) only wraps these columns into a PointCloud2 (:func:`ssov_ros.pointcloud.to_ros_cloud`)
with the height and is_dense given here, so the packing is tested without spinning a node.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .pointcloud import Cloud


@dataclass(frozen=True)
class SegmentedCloud:
    """The labelled cloud's columns (x, y, z, intensity, label, score, rgb) and how to shape them."""

    columns: dict[str, np.ndarray]
    keep: np.ndarray | slice  # the input points that are published (every point, or the valid ones)
    num_points: int  # points in the input cloud
    height: int  # rows of the published cloud: the input's when it is organised and nothing is dropped, else 1
    is_dense: bool  # every published point has finite x, y, z


def segmented_cloud(cloud: Cloud, valid_idx: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                    rgb_lut: np.ndarray, drop_invalid_points: bool) -> SegmentedCloud:
    """Columns of the segmented cloud for ``cloud``, whose points ``valid_idx`` got ``labels`` and ``scores``.

    Points outside ``valid_idx`` (NaN/Inf, beyond the range, zero) get label 0 and score 0, or are left out when
    ``drop_invalid_points``; intensity is the input's, as read (not the model's scaled copy); rgb is
    ``rgb_lut[label]`` (the packed RViz colour of each class, :func:`ssov_ros.pointcloud.rgb_packed`)."""
    n = cloud.num_points
    full_labels = np.zeros(n, dtype=np.uint32)
    full_scores = np.zeros(n, dtype=np.float32)
    full_labels[valid_idx] = labels
    full_scores[valid_idx] = scores
    keep = valid_idx if drop_invalid_points else slice(None)
    columns = {"x": cloud.xyz[keep, 0], "y": cloud.xyz[keep, 1], "z": cloud.xyz[keep, 2],
               "intensity": cloud.intensity[keep], "label": full_labels[keep], "score": full_scores[keep],
               "rgb": rgb_lut[full_labels[keep]]}
    organised = cloud.height > 1 and not drop_invalid_points
    # every kept point has finite x, y, z when invalid points are dropped; read_cloud already knows otherwise
    dense = drop_invalid_points or bool(cloud.valid.all())
    return SegmentedCloud(columns, keep, n, cloud.height if organised else 1, dense)


def similarity_columns(out: SegmentedCloud, valid_idx: np.ndarray, similarity: np.ndarray) -> dict[str, np.ndarray]:
    """Columns of the query cloud (x, y, z, similarity) over the same points as ``out``; ``similarity`` holds
    the valid points' values, the others score 0 (like their label)."""
    full = np.zeros(out.num_points, dtype=np.float32)
    full[valid_idx] = similarity
    return {"x": out.columns["x"], "y": out.columns["y"], "z": out.columns["z"], "similarity": full[out.keep]}
