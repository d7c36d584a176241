"""A procedural synthetic street world, written as a genuine nuScenes-format dataset.

The world is the project's only place where distillation quality can be measured end to end without the
real dataset: lidar sweeps with point labels, six camera images with per-pixel class and instance ground
truth, the real nuScenes rig and its camera/lidar time offsets (see docs/synthetic.md).  Read it back with
:class:`~ssov_train.data.nuscenes.NuScenesReader` (version ``v1.0-<name>``) or the nuScenes devkit.
"""

from .writer import DEFAULT_HEIGHT, DEFAULT_WIDTH, default_splits, generate_world

__all__ = ["DEFAULT_HEIGHT", "DEFAULT_WIDTH", "default_splits", "generate_world"]
