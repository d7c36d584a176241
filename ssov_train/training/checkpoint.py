"""The one checkpoint format read by training (init / resume), evaluation, export and the ROS node.

A checkpoint is a plain dict loadable with ``torch.load(path, weights_only=True)``: tensors, numbers, strings,
lists and dicts only, so loading never runs pickled code.  Its tensors are CPU tensors whatever device trained
the model, and it is read onto the CPU, so a checkpoint written on a GPU machine loads on a CPU-only one and
vice versa.  Besides the weights it carries everything a
consumer needs to rebuild the model and its input exactly (model / voxel config, input fields, classes,
palette), the full training config, and the state a resumed run needs (optimiser, scheduler, epoch, step,
torch RNG).  :func:`load_checkpoint` checks that the model-bound parts match what the caller is about to
build and names the first key that does not.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import ConfigError, DataError
from ..io import atomic_path

FORMAT_NAME = "ssov-checkpoint"
FORMAT_VERSION = 1
_MISSING = object()


def save_checkpoint(path: str | Path, checkpoint: dict) -> Path:
    """Write atomically: a job killed mid-write leaves the previous file intact, never a truncated one."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT_NAME, "version": FORMAT_VERSION, **on_cpu(checkpoint)}, tmp)
    return path


def on_cpu(value: Any) -> Any:
    """``value`` with every tensor in its dicts / lists / tuples on the CPU (no copy for those already there), so
    a file never names the GPU that wrote it."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: on_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [on_cpu(v) for v in value]
    if isinstance(value, tuple):
        return tuple(on_cpu(v) for v in value)
    return value


TRAINING_STATE = ("optimizer", "scheduler", "rng", "global_step", "scaler")


def without_training_state(checkpoint: dict) -> dict:
    """The checkpoint minus what only a resumed run needs (optimiser momentum doubles the size): what ships."""
    return {k: v for k, v in checkpoint.items() if k not in TRAINING_STATE}


def lookup(checkpoint: dict, dotted: str) -> Any:
    """Value at a dotted key (``model.arch``), or a sentinel when absent."""
    node: Any = checkpoint
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _plain(value: Any) -> Any:
    """Tuples as lists, so an expected tuple matches the list torch stores."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def check_expected(checkpoint: dict, expect: dict[str, Any], source: str) -> None:
    """Raise one :class:`ConfigError` naming the first dotted key whose value differs from ``expect``."""
    for key, want in expect.items():
        have = lookup(checkpoint, key)
        if have is _MISSING:
            raise ConfigError(f"checkpoint {source} has no {key!r} (expected {want!r})")
        if _plain(have) != _plain(want):
            raise ConfigError(f"checkpoint {source} does not match this run: {key} is {have!r} there, "
                              f"{want!r} here")


def load_checkpoint(path: str | Path, expect: Optional[dict[str, Any]] = None) -> dict:
    """Read and verify a checkpoint; ``expect`` maps dotted keys (``voxel``, ``model.arch``, ``class_names``)
    to the values this run needs."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        raise DataError(f"checkpoint {path} is unreadable or not a weights-only checkpoint ({e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_NAME:
        raise DataError(f"{path} is not an ssov checkpoint")
    if ckpt.get("version") != FORMAT_VERSION:
        raise DataError(f"checkpoint {path} has format version {ckpt.get('version')}; this ssov reads "
                        f"version {FORMAT_VERSION}")
    check_expected(ckpt, expect or {}, str(path))
    return ckpt


def load_model(path: str | Path, expect: Optional[dict[str, Any]] = None):
    """(eval-mode MinkUNet with the file's weights, checkpoint dict): what evaluation, the torch backend and
    export build from an ssov-checkpoint."""
    from ..models import MinkUNet, MinkUNetConfig

    ckpt = load_checkpoint(path, expect)
    if "model" not in ckpt or "state_dict" not in ckpt:
        raise ConfigError(f"{path}: no model config / weights: not a model checkpoint")
    model = MinkUNet(MinkUNetConfig(**ckpt["model"]))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ConfigError(f"{path}: weights do not fit the model described in the file: {exc}") from exc
    return model.eval(), ckpt


def model_label(path: str | Path) -> str:
    """A model file's name for titles: a training run's ``last.pt`` / ``best.pt`` / ``epoch_NNN.pt`` with its
    run directory ("annotation_free/last.pt": many runs have a last.pt), any other file (an exported package,
    a shipped checkpoint) by its own name; an exported package given by its model.yaml by the package's name."""
    path = Path(path)
    if path.name == "model.yaml" and path.parent.suffix == ".ssovpkg":
        return path.parent.name
    if path.name in ("last.pt", "best.pt") or re.fullmatch(r"epoch_\d+\.pt", path.name):
        return f"{path.parent.name}/{path.name}"
    return path.name


def rng_state() -> dict:
    """The global RNG state a resumed run restores (data randomness is derived from seeds, see data.py)."""
    return {"torch": torch.get_rng_state()}


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])


def first_mismatch(saved: Any, current: Any, prefix: str = "") -> Optional[str]:
    """Dotted path of the first difference between two plain config trees, or None when equal."""
    saved, current = _plain(saved), _plain(current)
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current), key=str):
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved or key not in current:
                return where
            found = first_mismatch(saved[key], current[key], where)
            if found:
                return found
        return None
    return None if saved == current else (prefix or "<root>")
