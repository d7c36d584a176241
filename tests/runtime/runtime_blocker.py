"""Test helper: make the training / offline stack unimportable, in this process or in a child process.

:class:`ImportBlocker` is a ``sys.meta_path`` finder that raises ModuleNotFoundError for every module of the
blocked top-level packages, as if they were not installed.  :func:`blocked` applies it in this process: it also
takes the blocked packages and the project's own packages out of ``sys.modules`` for its duration (the project's
are imported afresh under the blocker, then the originals are put back).  :func:`child_env` writes a
``sitecustomize.py`` that installs the blocker in any Python process started with the returned environment.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

# what a deployed node must not need: the training stack (torch & co), the offline tools' libraries, and scipy
# (the node's kernels are numpy / numba)
BLOCKED = ("torch", "torchvision", "spconv", "cumm", "open_clip", "nuscenes", "tqdm", "sklearn", "scipy")
PROJECT = ("ssov_train", "ssov_ros", "ssov_export")


class ImportBlocker(importlib.abc.MetaPathFinder):
    def __init__(self, names: Sequence[str]):
        self.names = frozenset(names)
        self.attempts: list[str] = []  # every blocked import that was tried (optional imports included)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in self.names:
            self.attempts.append(fullname)
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked by the runtime test)", name=fullname)
        return None


def _top(name: str) -> str:
    return name.partition(".")[0]


@contextlib.contextmanager
def blocked(names: Sequence[str] = BLOCKED) -> Iterator[ImportBlocker]:
    """Within the block, ``names`` cannot be imported and the project's modules are fresh imports."""
    forget = set(names) | set(PROJECT)
    saved = {k: m for k, m in sys.modules.items() if _top(k) in forget}
    for k in saved:
        del sys.modules[k]
    blocker = ImportBlocker(names)
    sys.meta_path.insert(0, blocker)
    try:
        yield blocker
    finally:
        sys.meta_path.remove(blocker)
        for k in [k for k in sys.modules if _top(k) in forget]:
            del sys.modules[k]
        sys.modules.update(saved)


SITECUSTOMIZE = '''\
import sys
sys.path.insert(0, {helper_dir!r})
import runtime_blocker
sys.meta_path.insert(0, runtime_blocker.ImportBlocker({names!r}))
del sys.path[0]
'''


def child_env(tmp_dir: Path, names: Sequence[str] = BLOCKED, env: dict | None = None) -> dict:
    """An environment whose Python processes start with the blocker installed (``sitecustomize`` on PYTHONPATH)."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    (tmp_dir / "sitecustomize.py").write_text(SITECUSTOMIZE.format(helper_dir=str(Path(__file__).parent),
                                                                   names=tuple(names)))
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_dir), env.get("PYTHONPATH", "")]))
    return env
