"""The frame model rejects malformed data with one message naming the sample and the field."""

import numpy as np
import pytest

from ssov_train.data.frame import CameraView, Frame
from ssov_train.errors import DataError


def _camera(**changes):
    kw = dict(name="CAM_FRONT", token="c0", width=200, height=100, intrinsics=np.diag([100.0, 100.0, 1.0]),
              lidar_to_camera=np.eye(4))
    kw.update(changes)
    return CameraView(**kw)


def _frame(**changes):
    kw = dict(token="s0", dataset="test", points=np.zeros((3, 3), np.float32), intensity=np.zeros(3, np.float32),
              cameras=[_camera()])
    kw.update(changes)
    return Frame(**kw)


def test_valid_frame():
    f = _frame(labels=np.array([1, 2, 0], np.uint8))
    assert f.num_points == 3 and f.camera("CAM_FRONT").token == "c0"
    with pytest.raises(KeyError, match="no camera 'CAM_BACK'"):
        f.camera("CAM_BACK")


@pytest.mark.parametrize("changes, message", [
    (dict(points=np.zeros((0, 3), np.float32), intensity=np.zeros(0, np.float32)), "empty point cloud"),
    (dict(points=np.array([[0, 0, np.nan], [1, 1, 1], [2, 2, 2]], np.float32)), "1 points have NaN/Inf"),
    (dict(points=np.zeros((3, 4), np.float32)), r"points must be \(N, 3\)"),
    (dict(labels=np.zeros(2, np.uint8)), r"labels must have shape \(3,\)"),
    (dict(cameras=[_camera(lidar_to_camera=np.full((4, 4), np.nan))]), "CAM_FRONT has invalid calibration"),
    (dict(cameras=[_camera(intrinsics=np.zeros((3, 3)))]), "invalid size or focal length"),
])
def test_malformed_frames(changes, message):
    with pytest.raises(DataError, match=message) as e:
        _frame(**changes)
    assert "sample s0" in str(e.value)


def test_image_errors_name_the_file(tmp_path):
    missing = _camera(image_path=tmp_path / "nope.jpg")
    with pytest.raises(DataError, match="nope.jpg"):
        missing.load_image()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="unreadable"):
        _camera(image_path=bad).load_image()
