"""Two-stage pipelining of :class:`Segmenter`: the network of frame t+1 runs while AFI refines frame t.

On a CPU the network (onnxruntime) and AFI (numpy / numba kernels) both release the GIL, so the two halves of
:meth:`Segmenter.segment` overlap on two cores: throughput is bounded by the slower half instead of their sum
(README "ROS 2 node" has the figures).  Results are those of :meth:`Segmenter.segment` frame by frame: frames are
refined in submission order (streaming AFI needs it) and the caller's thread alone runs :meth:`Segmenter.infer`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .segmenter import Inferred, Segmentation, Segmenter


@dataclass
class FrameOutcome:
    """What the result callback receives for each submitted frame, exactly once and in submission order."""

    context: Any  # the caller's object given to submit(), passed through untouched
    result: Optional[Segmentation] = None  # None when the frame failed or was superseded
    error: Optional[Exception] = None  # what refine raised for this frame
    superseded: bool = False  # dropped unrefined: a newer frame arrived while the worker was busy
    wait_ms: float = 0.0  # time between the end of infer and the start of refine


@dataclass
class _Job:
    inferred: Inferred
    pose: Optional[np.ndarray]
    keep_probs: bool
    context: Any
    queued_at: float
    reset_before: bool = False
    superseded: list["_Job"] = field(default_factory=list)  # older frames this one replaced, reported first


class PipelinedSegmenter:
    """Runs :meth:`Segmenter.infer` in the caller's thread (:meth:`submit`) and :meth:`Segmenter.refine` on one
    worker thread, which calls ``on_result(FrameOutcome)`` for every frame.

    The hand-off holds one frame.  ``drop_stale=True`` (a live sensor): a frame still waiting when a newer one is
    submitted is dropped (reported with ``superseded=True``), so the output never lags behind a growing queue;
    ``drop_stale=False`` (offline, benchmarks): :meth:`submit` waits for the slot and every frame is refined.
    An exception raised by refine reaches ``on_result`` as ``error``; one raised by ``on_result`` itself is
    re-raised by the next :meth:`submit` / :meth:`wait_idle` / :meth:`close` call.  Use as a context manager or call
    :meth:`close`, which refines what is still waiting and joins the worker.
    """

    def __init__(self, segmenter: Segmenter, on_result: Callable[[FrameOutcome], None], drop_stale: bool = True):
        self.segmenter = segmenter
        self.on_result = on_result
        self.drop_stale = drop_stale
        self._cond = threading.Condition()
        self._pending: Optional[_Job] = None
        self._busy = False
        self._closed = False
        self._reset_requested = False
        self._callback_error: Optional[BaseException] = None
        self._worker = threading.Thread(target=self._run, name="ssov-refine", daemon=True)
        self._worker.start()

    def submit(self, xyz: np.ndarray, intensity: Optional[np.ndarray] = None, pose: Optional[np.ndarray] = None,
               keep_probs: bool = False, context: Any = None) -> dict[str, float]:
        """Infer one scan now (bad input raises here, as from :meth:`Segmenter.segment`) and queue its refinement.
        Returns the infer stage timings (ms)."""
        self._raise_callback_error()
        inferred = self.segmenter.infer(xyz, intensity)
        job = _Job(inferred, pose, keep_probs, context, time.perf_counter())
        with self._cond:
            if self._closed:
                raise RuntimeError("PipelinedSegmenter is closed")
            if self._pending is not None and not self.drop_stale:
                self._cond.wait_for(lambda: self._pending is None or self._closed)
                if self._closed:
                    raise RuntimeError("PipelinedSegmenter was closed while a frame waited")
            old = self._pending
            if old is not None:  # superseded: its reset and its own dropped predecessors carry over
                job.superseded = old.superseded + [old]
                job.reset_before = old.reset_before
            job.reset_before = job.reset_before or self._reset_requested
            self._reset_requested = False
            self._pending = job
            self._cond.notify_all()
        return inferred.timings_ms

    def reset(self) -> None:
        """Forget the streaming history before the next submitted frame (frames already submitted keep theirs)."""
        with self._cond:
            self._reset_requested = True

    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        """Wait until every submitted frame has been reported; False on timeout."""
        with self._cond:
            done = self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)
        self._raise_callback_error()
        return done

    def close(self, timeout: Optional[float] = None) -> None:
        """Refine the frame still waiting, then stop and join the worker (idempotent)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout)
        self._raise_callback_error()

    def __enter__(self) -> "PipelinedSegmenter":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                job = self._pending
                if job is None:  # closed and drained
                    return
                self._pending, self._busy = None, True
                self._cond.notify_all()  # a blocked submit may fill the slot now
            for old in job.superseded:
                self._deliver(FrameOutcome(old.context, superseded=True))
            outcome = FrameOutcome(job.context, wait_ms=(time.perf_counter() - job.queued_at) * 1000)
            try:
                if job.reset_before:
                    self.segmenter.reset()
                outcome.result = self.segmenter.refine(job.inferred, pose=job.pose, keep_probs=job.keep_probs)
            except Exception as exc:  # noqa: BLE001 - reported to the caller through on_result, never lost
                outcome.error = exc
            self._deliver(outcome)
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _deliver(self, outcome: FrameOutcome) -> None:
        try:
            self.on_result(outcome)
        except Exception as exc:  # noqa: BLE001 - the worker must outlive a faulty callback; re-raised to the caller
            with self._cond:
                self._callback_error = self._callback_error or exc

    def _raise_callback_error(self) -> None:
        with self._cond:
            exc, self._callback_error = self._callback_error, None
        if exc is not None:
            raise RuntimeError(f"PipelinedSegmenter result callback raised {type(exc).__name__}: {exc}") from exc
