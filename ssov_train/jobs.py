"""What every long command shares: its progress display, its thread count, and how Ctrl-C ends it.

Ctrl-C (SIGINT) raises KeyboardInterrupt wherever the job is; a loop that knows where it stopped re-raises it as
:class:`Interrupted` with that place ("at epoch 2 step 40; last.pt holds epoch 1"), and ``ssov-train`` turns
either into one line with the command that resumes, and exit status 130 (128 + SIGINT, what shells report).
Every file a job writes is atomic, so an interrupted job leaves complete files or none.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, Optional

INTERRUPTED_EXIT = 130


class Interrupted(KeyboardInterrupt):
    """Ctrl-C inside a job, with where it stopped and whether what it wrote so far can be resumed."""

    def __init__(self, where: str, resumable: bool = True):
        super().__init__(where)
        self.where = where
        self.resumable = resumable


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads(cores: Optional[int] = None) -> Optional[int]:
    """torch's intra-op thread count when the user chose none: 1 on machines with <= 2 cores, else torch's
    own default (None).  On 2 cores shared with other work, 2 torch threads wait on each other: a pretrain
    epoch measured 136 s with torch's default and 10 s with one thread (issue 15).  ``OMP_NUM_THREADS``,
    when set, is the user's choice and wins."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return 1 if (available_cores() if cores is None else cores) <= 2 else None


def configure_threads(requested: Optional[int] = None) -> int:
    """Set torch's intra-op threads to ``requested`` (``--threads``) or :func:`default_threads`; returns the
    count in effect."""
    import torch

    threads = requested if requested is not None else default_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def progress_bar(iterable: Optional[Iterable] = None, enabled: bool = True, **kwargs):
    """A tqdm bar on stderr: live on a terminal; in a log file (nohup, CI, a non-tty) a status line every
    30 s instead of a redraw every 0.1 s, so the job's progress shows there too without flooding it."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(iterable, disable=not enabled, file=sys.stderr, mininterval=0.1 if tty else 30.0,
                maxinterval=10.0 if tty else 60.0, **kwargs)
