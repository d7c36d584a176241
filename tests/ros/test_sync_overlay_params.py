"""ROS-free parts of the node: approximate sync, camera overlays on the real sample (parameters: test_params.py)."""

from types import SimpleNamespace as NS

import numpy as np
import pytest
from ros_test_utils import HAND_K, HAND_LIDAR_TO_CAMERA, HAND_PIXELS, HAND_POINTS, HAND_SIZE, hand_image

from ssov_ros.overlay import ImageError, camera_from_info, decode_image, draw_points, render_overlay
from ssov_ros.sync import ApproximateSync, StampedQueue

MS = 1_000_000


def test_stamped_queue_nearest_within_tolerance():
    q = StampedQueue(depth=3)
    for t in (100, 40, 0, 70):  # out of order; depth 3 forgets the oldest (0)
        q.push(t * MS, t)
    assert len(q) == 3
    assert q.nearest(52 * MS, 20 * MS) == (40 * MS, 40)
    assert q.nearest(58 * MS, 20 * MS) == (70 * MS, 70)
    assert q.nearest(200 * MS, 20 * MS) is None
    assert q.nearest(0, 5 * MS) is None  # forgotten
    assert q.latest() == (100 * MS, 100)


def test_approximate_sync_needs_every_stream():
    sync = ApproximateSync(tolerance_ns=30 * MS)
    sync.push("CAM_FRONT", 1000 * MS, "f")
    sync.push("CAM_BACK", 1040 * MS, "b")
    assert sync.match(1010 * MS, ["CAM_FRONT"]) == {"CAM_FRONT": "f"}
    assert sync.match(1010 * MS, ["CAM_FRONT", "CAM_BACK"]) == {"CAM_FRONT": "f", "CAM_BACK": "b"}
    assert sync.match(1010 * MS, ["CAM_FRONT", "CAM_LEFT"]) is None
    sync.clear(after_ns=1020 * MS)  # a restarted bag: what lies in the future of 1020 ms goes
    assert sync.match(1010 * MS, ["CAM_FRONT", "CAM_BACK"]) is None and sync.match(1000 * MS, ["CAM_FRONT"])
    sync.clear()
    assert sync.match(1000 * MS, ["CAM_FRONT"]) is None



def _image_msg(rgb, encoding="rgb8", pad=0):
    h, w = rgb.shape[:2]
    img = rgb[:, :, ::-1] if encoding == "bgr8" else rgb
    rows = np.concatenate([img.reshape(h, w * 3), np.zeros((h, pad), np.uint8)], 1)
    return NS(encoding=encoding, height=h, width=w, step=w * 3 + pad, data=rows.tobytes(), is_bigendian=0)


def test_decode_raw_and_compressed_images(frame):
    import cv2

    rgb = frame.cameras[0].load_image()[:90, :160]
    np.testing.assert_array_equal(decode_image(_image_msg(rgb)), rgb)
    np.testing.assert_array_equal(decode_image(_image_msg(rgb, "bgr8", pad=4)), rgb)
    ok, png = cv2.imencode(".png", rgb[:, :, ::-1])
    np.testing.assert_array_equal(decode_image(NS(format="png", data=png.tobytes())), rgb)
    with pytest.raises(ImageError, match="does not match"):
        decode_image(NS(encoding="rgb8", height=90, width=160, step=480, data=b"\0" * 10))
    with pytest.raises(ImageError, match="not supported"):
        decode_image(NS(encoding="32FC1", height=1, width=1, step=4, data=b"\0" * 4))
    with pytest.raises(ImageError, match="cannot be decoded"):
        decode_image(NS(format="jpeg", data=b"not a jpeg"))


def _square(image, rc, radius, color):
    r, c = rc
    image[max(r - radius, 0):r + radius + 1, max(c - radius, 0):c + radius + 1] = color


@pytest.mark.parametrize("radius", [0, 1])
def test_overlay_of_hand_placed_points_at_hand_computed_pixels(radius):
    """Points 0 and 1 are drawn at their pixels (squares of 2 radius + 1); point 2, 10 m behind point 0 in the
    next pixel, is hidden; the points behind, beside and too near the camera are not drawn."""
    width, height = HAND_SIZE
    camera = camera_from_info(NS(k=HAND_K.ravel().tolist(), width=width, height=height), HAND_LIDAR_TO_CAMERA)
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9], [9, 9, 9], [9, 9, 9]], np.uint8)
    image = hand_image()
    out, drawn = render_overlay(image, camera, HAND_POINTS, colors, radius=radius, occlusion=True)
    expected = image.copy()
    _square(expected, HAND_PIXELS[1], radius, colors[1])
    _square(expected, HAND_PIXELS[0], radius, colors[0])
    assert drawn == 2
    np.testing.assert_array_equal(out, expected)
    # without the z-buffer point 2 is drawn too, under the nearer point 0 where their squares overlap
    out, drawn = render_overlay(image, camera, HAND_POINTS, colors, radius=radius, occlusion=False)
    expected = image.copy()
    _square(expected, HAND_PIXELS[2], radius, colors[2])
    _square(expected, HAND_PIXELS[1], radius, colors[1])
    _square(expected, HAND_PIXELS[0], radius, colors[0])
    assert drawn == 3
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ImageError, match="camera_info says"):
        render_overlay(image[:10], camera, HAND_POINTS, colors)
    with pytest.raises(ImageError, match="no usable calibration"):
        camera_from_info(NS(k=[0.0] * 9, width=1600, height=900), np.eye(4))


def test_draw_points_clips_at_the_border():
    img = np.zeros((4, 4, 3), np.uint8)
    out = draw_points(img, np.array([[0.5, 0.5], [3.9, 3.9]], np.float32), np.array([[1, 2, 3], [4, 5, 6]], np.uint8), 1)
    assert (out[:2, :2] == [1, 2, 3]).all() and (out[2:, 2:] == [4, 5, 6]).all() and not img.any()
