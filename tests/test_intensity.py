"""Intensity on the model's scale (ssov_train.intensity), ROS-free: expected verdicts worked out by hand."""

import numpy as np
import pytest

from ssov_train.intensity import IntensityRangeCheck, intensity_range_problem, training_intensity_max


def test_training_range_follows_the_vocabulary():
    assert training_intensity_max("nuscenes") == 255.0 and training_intensity_max("") == 255.0
    assert training_intensity_max("semantickitti") == 1.0


def test_range_problems():
    nuscenes_like = np.arange(256, dtype=np.float32)  # 99th percentile 252.45: in range
    assert intensity_range_problem(nuscenes_like, 255.0) == ""
    unit = nuscenes_like / 255.0  # 99th percentile 0.99: below 255 / 50 = 5.1
    problem = intensity_range_problem(unit, 255.0)
    assert "up to 0.99 (99th percentile)" in problem and "scale them by about 258" in problem
    assert "scale them by about 0.0039" in intensity_range_problem(nuscenes_like, 1.0)  # 252.45 > 2 x 1
    assert "every intensity is 0" in intensity_range_problem(np.zeros(10), 255.0)
    assert "negative" in intensity_range_problem(np.linspace(-10, 100, 1000), 255.0)
    # non-finite values are ignored, not a reason by themselves
    assert intensity_range_problem(np.r_[nuscenes_like, np.nan, np.inf], 255.0) == ""
    assert intensity_range_problem(np.array([np.nan]), 255.0) == "no finite intensity"


def test_a_run_of_frames_is_reported_once():
    check = IntensityRangeCheck(255.0, frames=3)
    good, bad = np.arange(256.0), np.arange(256.0) / 255.0
    assert [check.update(bad) is not None for _ in range(5)] == [False, False, True, False, False]
    assert "trained on 0..255" in check.problem
    assert check.update(good) is None and check.problem == ""
    assert check.update(bad) is None and check.update(good) is None  # a run of 1 is no evidence
    assert [check.update(bad) is not None for _ in range(3)] == [False, False, True]  # a new run: reported again
    with pytest.raises(ValueError):
        IntensityRangeCheck(0.0)
