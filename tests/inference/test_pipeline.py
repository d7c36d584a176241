"""Segmenter.infer / refine compose to segment, and PipelinedSegmenter gives the serial results frame by frame
(streaming AFI with poses, resets, unposed frames), reports errors and superseded frames, and shuts down cleanly."""

import threading
from pathlib import Path

import numpy as np
import pytest

from ssov_train.afi import AFIConfig, TemporalConfig
from ssov_train.data.sample import SampleReader
from ssov_train.errors import DataError
from ssov_train.inference import PipelinedSegmenter, Segmenter, open_backend

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "models" / "ssov_synthetic_minkunet34c_w025.pt"


@pytest.fixture(scope="module")
def backend():
    return open_backend(DEMO, threads=1)


@pytest.fixture(scope="module")
def sweep():
    reader = SampleReader(REPO / "data" / "nuscenes_sample")
    frame = reader.load(reader.split_tokens()[0])
    return frame.points, frame.intensity


def _drive(sweep, n: int, size: int = 8000):
    """n frames of a vehicle driving along x past the real sweep's scene: (xyz, intensity, pose) in the sensor
    frame, each a different random subset of the points (as consecutive sweeps differ)."""
    xyz, intensity = sweep
    rng = np.random.default_rng(7)
    frames = []
    for i in range(n):
        idx = rng.choice(len(xyz), size, replace=False)
        pose = np.eye(4)
        pose[0, 3] = 0.5 * i
        frames.append(((xyz[idx] - pose[:3, 3]).astype(np.float32), intensity[idx], pose))
    return frames


def _assert_same(a, b):
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=1e-7)
    assert a.num_voxels == b.num_voxels


def test_infer_then_refine_is_segment(backend, sweep):
    xyz, intensity = sweep
    for afi in (None, AFIConfig()):
        seg = Segmenter(backend, afi=afi)
        inferred = seg.infer(xyz, intensity)
        assert set(inferred.timings_ms) == {"voxelize", "network", "softmax"} and inferred.probs.shape[0] == len(xyz)
        halves = seg.refine(inferred, keep_probs=True)
        whole = seg.segment(xyz, intensity, keep_probs=True)
        _assert_same(halves, whole)
        np.testing.assert_allclose(halves.probs, whole.probs, rtol=1e-6, atol=1e-7)
        assert ("afi" in halves.timings_ms) == (afi is not None)


def test_pipelined_streaming_afi_equals_serial_frame_by_frame(backend, sweep):
    frames = _drive(sweep, 6)
    poses = [f[2] for f in frames]
    poses[3] = None  # an unposed frame clears the history in both runs
    temporal = TemporalConfig(history=2)

    serial_seg = Segmenter(backend, afi=AFIConfig(), temporal=temporal)
    serial = []
    for i, ((xyz, inten, _), pose) in enumerate(zip(frames, poses)):
        if i == 5:
            serial_seg.reset()
        serial.append(serial_seg.segment(xyz, inten, pose=pose))

    outcomes = []
    with PipelinedSegmenter(Segmenter(backend, afi=AFIConfig(), temporal=temporal), outcomes.append,
                            drop_stale=False) as pipe:
        for i, ((xyz, inten, _), pose) in enumerate(zip(frames, poses)):
            if i == 5:
                pipe.reset()
            pipe.submit(xyz, inten, pose=pose, context=i)
    assert [o.context for o in outcomes] == list(range(len(frames)))
    assert not any(o.error or o.superseded for o in outcomes)
    for o, s in zip(outcomes, serial):
        _assert_same(o.result, s)
        assert "afi" in o.result.timings_ms and o.wait_ms >= 0
    # the history mattered: frame 2 was voted on by frames 0 and 1, so a lone refinement differs
    alone = Segmenter(backend, afi=AFIConfig()).segment(frames[2][0], frames[2][1])
    assert not np.allclose(alone.scores, serial[2].scores)


def test_errors_reach_the_callback_and_the_worker_goes_on(backend, sweep):
    (xyz, inten, pose), = _drive(sweep, 1, size=3000)
    outcomes = []
    with PipelinedSegmenter(Segmenter(backend, afi=AFIConfig(), temporal=TemporalConfig(history=2)),
                            outcomes.append, drop_stale=False) as pipe:
        with pytest.raises(DataError, match="empty"):  # bad input fails in the caller, before the hand-off
            pipe.submit(np.zeros((0, 3), np.float32))
        pipe.submit(xyz, inten, pose=np.eye(3), context="bad pose")
        pipe.submit(xyz, inten, pose=pose, context="good")
    assert [o.context for o in outcomes] == ["bad pose", "good"]
    assert isinstance(outcomes[0].error, ValueError) and "4x4" in str(outcomes[0].error)
    assert outcomes[0].result is None and outcomes[1].error is None and outcomes[1].result.labels.min() >= 1
    with pytest.raises(RuntimeError, match="closed"):
        pipe.submit(xyz, inten)


def test_a_busy_worker_drops_the_stale_frame_and_keeps_order(backend, sweep):
    frames = _drive(sweep, 4, size=2000)
    seg = Segmenter(backend, afi=AFIConfig(), temporal=TemporalConfig(history=2))
    release, started = threading.Event(), threading.Event()
    refine = seg.refine

    def slow_refine(*args, **kwargs):  # holds the worker on frame 0 until frames 1..3 have been submitted
        started.set()
        release.wait(30)
        return refine(*args, **kwargs)

    seg.refine = slow_refine
    outcomes = []
    pipe = PipelinedSegmenter(seg, outcomes.append)
    pipe.submit(*frames[0][:2], pose=frames[0][2], context=0)
    assert started.wait(30)
    pipe.reset()  # requested for frame 1, which is superseded: frame 3 inherits it
    for i in (1, 2, 3):
        pipe.submit(*frames[i][:2], pose=frames[i][2], context=i)
    release.set()
    assert pipe.wait_idle(60)
    pipe.close()
    assert [(o.context, o.superseded, o.result is not None) for o in outcomes] == [
        (0, False, True), (1, True, False), (2, True, False), (3, False, True)]
    # frame 3 was refined after the reset: the same as a fresh segmenter's first frame
    fresh = Segmenter(backend, afi=AFIConfig(), temporal=TemporalConfig(history=2))
    _assert_same(outcomes[3].result, fresh.segment(*frames[3][:2], pose=frames[3][2]))


def test_a_failing_callback_is_raised_to_the_caller(backend, sweep):
    (xyz, inten, _), = _drive(sweep, 1, size=2000)

    def broken(outcome):
        raise KeyError("publisher gone")

    pipe = PipelinedSegmenter(Segmenter(backend), broken, drop_stale=False)
    pipe.submit(xyz, inten)
    with pytest.raises(RuntimeError, match="publisher gone"):
        pipe.wait_idle(60)
    pipe.submit(xyz, inten)  # the worker survived it
    with pytest.raises(RuntimeError, match="KeyError"):
        pipe.close()
    assert not pipe._worker.is_alive()
