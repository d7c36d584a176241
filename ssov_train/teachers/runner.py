"""Run a teacher over camera images into a :class:`TeacherStore`: resumable, batched, shardable, and one bad
image stops nothing.

Sharding: ``ssov-train teach --shard i/n`` runs the i-th of n round-robin shards of the split's samples; under
``torchrun`` (``RANK`` / ``WORLD_SIZE`` set) each process takes its own shard automatically, and GPU teachers put
themselves on ``cuda:<LOCAL_RANK>``.  All shards write into the same output directory (every file is atomic).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Iterator, Optional, Protocol, Sequence, Union

import numpy as np

from .. import __version__
from ..data.frame import CameraView, Frame
from ..errors import DataError
from ..jobs import Interrupted, progress_bar
from .format import TeacherImage, TeacherStore

log = logging.getLogger(__name__)


class Teacher(Protocol):
    """What produces teacher outputs from camera images (the oracle, the box teacher, an open_clip teacher, ...).

    ``frame`` is the sample the camera belongs to (None when the runner is handed bare cameras), for teachers
    that need more than the image, such as the 3D boxes; such a teacher raises DataError when it is None.
    """

    name: str
    num_prompts: int
    feature_dim: Optional[int]

    def text_embeddings(self) -> Optional[np.ndarray]: ...

    def predict(self, camera: CameraView, frame: Optional[Frame] = None) -> TeacherImage: ...


class BatchTeacher(Teacher, Protocol):
    """A teacher that is faster on several images at once (a network): the runner hands it ``batch_size``."""

    batch_size: int

    def predict_batch(self, cameras: Sequence[CameraView], frames: Sequence[Optional[Frame]]) -> list[TeacherImage]: ...


def distributed_shard() -> Optional[tuple[int, int]]:
    """(rank, world size) when started by torchrun (``RANK`` / ``WORLD_SIZE``), else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None


def create_store_for(teacher: Teacher, root: str | Path, vocabulary_name: str) -> TeacherStore:
    """Create (or reopen, when compatible) the output directory for ``teacher``, text embeddings included."""
    return TeacherStore.create(root, teacher=teacher.name, vocabulary=vocabulary_name,
                               num_prompts=teacher.num_prompts, feature_dim=teacher.feature_dim,
                               text_embeddings=teacher.text_embeddings(), created_by=f"ssov {__version__}")


def _cameras(items: Iterable[Union[Frame, CameraView]]) -> Iterator[tuple[CameraView, Optional[Frame]]]:
    for item in items:
        if isinstance(item, Frame):
            yield from ((cam, item) for cam in item.cameras)
        else:
            yield item, None


def _batches(items: Iterable[tuple[CameraView, Optional[Frame]]], size: int
             ) -> Iterator[list[tuple[CameraView, Optional[Frame]]]]:
    batch: list[tuple[CameraView, Optional[Frame]]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_teacher(teacher: Teacher, frames_or_cameras: Iterable[Union[Frame, CameraView]], store: TeacherStore,
                overwrite: bool = False, progress: bool = True) -> list[tuple[str, str]]:
    """Write the teacher's output for every camera image into ``store``; return (image token, message) failures.

    Images already in the store are skipped unless ``overwrite`` (so an interrupted run resumes); an image whose
    input is missing or broken (DataError / OSError) is reported and the run goes on.  A teacher with
    ``predict_batch`` gets ``teacher.batch_size`` images at a time; when a batch fails, its images are retried
    one by one so only the bad one is lost.  ``progress`` shows a progress bar (on stderr; a status line every
    30 s outside a terminal) and prints the counts at the end.  Ctrl-C raises :class:`~ssov_train.jobs.Interrupted`
    with the counts so far (what was written is kept: a rerun skips it).
    """
    if store.num_prompts != teacher.num_prompts or store.feature_dim != teacher.feature_dim:
        raise DataError(f"teacher outputs at {store.root} hold {store.num_prompts} prompts / feature dim "
                        f"{store.feature_dim}; teacher {teacher.name} has {teacher.num_prompts} / {teacher.feature_dim}")
    total = None
    if isinstance(frames_or_cameras, (list, tuple)):
        total = sum(len(x.cameras) if isinstance(x, Frame) else 1 for x in frames_or_cameras)
    batch_size = int(getattr(teacher, "batch_size", 1)) if hasattr(teacher, "predict_batch") else 1
    failures: list[tuple[str, str]] = []
    counts = {"written": 0, "skipped": 0}

    def fail(cam: CameraView, e: Exception) -> None:
        failures.append((cam.token, str(e)))
        log.warning("teacher %s: image %s (%s) failed: %s", teacher.name, cam.token, cam.name, e)

    def todo() -> Iterator[tuple[CameraView, Optional[Frame]]]:
        for cam, frame in _cameras(frames_or_cameras):
            try:
                done = not overwrite and store.has(cam.token)
            except DataError as e:  # an invalid image token
                bar.update(1)
                fail(cam, e)
                continue
            if done:
                counts["skipped"] += 1
                bar.update(1)
                continue
            yield cam, frame

    try:
        with progress_bar(total=total, enabled=progress, desc=f"teacher {teacher.name}", unit="img") as bar:
            for batch in _batches(todo(), batch_size):
                outputs = None
                if batch_size > 1 and len(batch) > 1:
                    try:
                        outputs = teacher.predict_batch([c for c, _ in batch], [f for _, f in batch])  # type: ignore[attr-defined]
                    except (DataError, OSError):
                        outputs = None  # find the bad image(s) one by one below
                for i, (cam, frame) in enumerate(batch):
                    try:
                        out = outputs[i] if outputs is not None else teacher.predict(cam, frame=frame)
                        store.write(cam.token, out)
                        counts["written"] += 1
                    except (DataError, OSError) as e:
                        fail(cam, e)
                    bar.update(1)
    except KeyboardInterrupt:
        raise Interrupted(f"after {counts['written']} images written ({counts['skipped']} already present, "
                          f"{len(failures)} failed)") from None
    summary = (f"teacher {teacher.name}: {counts['written']} images written, {counts['skipped']} already present, "
               f"{len(failures)} failed")
    if progress:
        shown = "; ".join(f"{token} ({reason})" for token, reason in failures[:3])
        print(summary + (f": {shown}" + (" ..." if len(failures) > 3 else "") if failures else ""), flush=True)
    log.info(summary)
    return failures
