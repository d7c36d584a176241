"""Run a teacher over camera images into a :class:`TeacherStore`: resumable, and one bad image stops nothing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Iterator, Optional, Protocol, Union

import numpy as np
from tqdm import tqdm

from .. import __version__
from ..data.frame import CameraView, Frame
from ..errors import DataError
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


def run_teacher(teacher: Teacher, frames_or_cameras: Iterable[Union[Frame, CameraView]], store: TeacherStore,
                overwrite: bool = False, progress: bool = True) -> list[tuple[str, str]]:
    """Write the teacher's output for every camera image into ``store``; return (image token, message) failures.

    Images already in the store are skipped unless ``overwrite`` (so an interrupted run resumes); an image whose
    input is missing or broken (DataError / OSError) is reported and the run goes on.  ``progress`` shows a
    progress bar (on terminals only).
    """
    if store.num_prompts != teacher.num_prompts or store.feature_dim != teacher.feature_dim:
        raise DataError(f"teacher outputs at {store.root} hold {store.num_prompts} prompts / feature dim "
                        f"{store.feature_dim}; teacher {teacher.name} has {teacher.num_prompts} / {teacher.feature_dim}")
    total = None
    if isinstance(frames_or_cameras, (list, tuple)):
        total = sum(len(x.cameras) if isinstance(x, Frame) else 1 for x in frames_or_cameras)
    failures: list[tuple[str, str]] = []
    written = skipped = 0
    bar_off = None if progress else True  # None: tqdm shows the bar on terminals only
    with tqdm(total=total, desc=f"teacher {teacher.name}", unit="img", disable=bar_off) as bar:
        for cam, frame in _cameras(frames_or_cameras):
            bar.update(1)
            try:
                if not overwrite and store.has(cam.token):
                    skipped += 1
                    continue
                store.write(cam.token, teacher.predict(cam, frame=frame))
                written += 1
            except (DataError, OSError) as e:
                failures.append((cam.token, str(e)))
                log.warning("teacher %s: image %s (%s) failed: %s", teacher.name, cam.token, cam.name, e)
    log.info("teacher %s: %d images written, %d already present, %d failed", teacher.name, written, skipped,
             len(failures))
    return failures
