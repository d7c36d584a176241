"""The class dictionary: prompts -> categories -> raw dataset classes -> evaluation classes.

The dictionaries themselves are data (YAML under ``config/vocab/``); this module only loads and
validates them.  Everything that needs classes (pseudo-labels, training, evaluation, the node) goes
through :class:`ClassDictionary`, so there is exactly one copy of the mapping.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import yaml

from ..errors import ConfigError

VOCAB_DIR = Path(__file__).resolve().parents[2] / "config" / "vocab"  # in a source checkout


def vocab_dirs() -> list[Path]:
    """Where built-in dictionaries live: the source tree, else the installed share/ssov_ros/config/vocab."""
    prefixes = [sys.prefix, *filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep))]
    return [VOCAB_DIR, *(Path(p) / "share" / "ssov_ros" / "config" / "vocab" for p in prefixes)]


@dataclass(frozen=True)
class Category:
    name: str
    raw_class: int  # raw dataset label id
    prompts: tuple[str, ...]
    first_prompt: int  # prompt id of prompts[0]


@dataclass
class ClassDictionary:
    name: str
    version: int
    dataset: str
    eval_classes: list[str]  # names of classes 1..C (0 = ignore)
    palette: np.ndarray  # (C+1, 3) uint8, row 0 = ignore colour
    raw_classes: dict[int, str]
    raw_to_eval_map: dict[int, int]
    categories: list[Category]
    source: str = ""
    duplicate_prompts: dict[str, list[int]] = field(default_factory=dict)

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of evaluation classes including the ignore class 0 (17 for nuScenes)."""
        return len(self.eval_classes) + 1

    @property
    def class_names(self) -> list[str]:
        """Names indexed by evaluation label, index 0 = 'ignore'."""
        return ["ignore", *self.eval_classes]

    @cached_property
    def prompts(self) -> list[str]:
        return [p for c in self.categories for p in c.prompts]

    @property
    def num_prompts(self) -> int:
        return len(self.prompts)

    # ---- lookup tables -----------------------------------------------------------------------
    @cached_property
    def prompt_to_category(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.categories)), [len(c.prompts) for c in self.categories])

    @cached_property
    def raw_to_eval(self) -> np.ndarray:
        """LUT over raw ids 0..max_raw -> evaluation label (unknown raw ids -> 0)."""
        lut = np.zeros(max(self.raw_classes) + 1, dtype=np.uint8)
        for raw, ev in self.raw_to_eval_map.items():
            lut[raw] = ev
        return lut

    @cached_property
    def prompt_to_raw(self) -> np.ndarray:
        cat_raw = np.array([c.raw_class for c in self.categories], dtype=np.int32)
        return cat_raw[self.prompt_to_category]

    @cached_property
    def prompt_to_eval(self) -> np.ndarray:
        return self.raw_to_eval[self.prompt_to_raw]

    @cached_property
    def same_category(self) -> np.ndarray:
        """(P, P) bool: prompts i and j belong to the same dictionary category (TMP's text target)."""
        c = self.prompt_to_category
        return c[:, None] == c[None, :]

    def map_raw(self, raw_labels: np.ndarray) -> np.ndarray:
        """Raw dataset labels -> evaluation labels (0 = ignore); ids outside the table -> 0."""
        raw = np.asarray(raw_labels).astype(np.int64)
        out = np.zeros(raw.shape, dtype=np.uint8)
        ok = (raw >= 0) & (raw < len(self.raw_to_eval))
        out[ok] = self.raw_to_eval[raw[ok]]
        return out

    def eval_index(self, name: str) -> int:
        try:
            return self.class_names.index(name)
        except ValueError:
            raise KeyError(f"{self.name}: no evaluation class {name!r}; known: {self.eval_classes}") from None

    def raw_index(self, name: str) -> int:
        for k, v in self.raw_classes.items():
            if v == name:
                return k
        raise KeyError(f"{self.name}: no raw class {name!r}")

    def eval_classes_in_group(self, group: str) -> list[str]:
        """Evaluation classes whose raw classes all lie in the raw taxonomy's top-level ``group`` (the part of
        the raw name before the first dot: nuScenes ``flat`` -> driveable_surface, other_flat, sidewalk,
        terrain; ``vehicle`` -> car, truck, bus, ...), in evaluation order; [] when the raw names have no such
        group (SemanticKITTI's flat names)."""
        members: dict[int, list[str]] = {}
        for raw, ev in self.raw_to_eval_map.items():
            if ev:
                members.setdefault(ev, []).append(self.raw_classes[raw].split(".", 1)[0])
        return [self.class_names[ev] for ev in sorted(members) if all(g == group for g in members[ev])]

    def category_of_raw(self, raw_class: int) -> Category:
        """The first category mapping to ``raw_class`` (used by oracle-style teachers)."""
        for c in self.categories:
            if c.raw_class == raw_class:
                return c
        raise KeyError(f"{self.name}: no category maps to raw class {raw_class} ({self.raw_classes.get(raw_class)})")


def _fail(source: str, msg: str) -> ConfigError:
    return ConfigError(f"class dictionary {source}: {msg}")


def _color(value, source: str, where: str) -> list[int]:
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in value)):
        raise _fail(source, f"{where}: color must be [r, g, b] with integers 0..255, got {value!r}")
    return value


def parse_dictionary(data: dict, source: str = "<dict>") -> ClassDictionary:
    """Validate a dictionary document (already parsed YAML) and build a :class:`ClassDictionary`."""
    if not isinstance(data, dict):
        raise _fail(source, "top level must be a mapping")
    required = ["name", "eval_classes", "raw_classes", "categories"]
    missing = [k for k in required if k not in data]
    if missing:
        raise _fail(source, f"missing keys {missing}")
    known = {"name", "version", "dataset", "ignore_index", "eval_classes", "ignore_color", "raw_classes",
             "allowed_duplicate_prompts", "categories"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise _fail(source, f"unknown keys {unknown}; known keys: {sorted(known)}")
    if data.get("ignore_index", 0) != 0:
        raise _fail(source, "ignore_index must be 0 (evaluation label 0 is 'ignore' throughout ssov)")

    eval_names: list[str] = []
    colors = [_color(data.get("ignore_color", [0, 0, 0]), source, "ignore_color")]
    for i, entry in enumerate(data["eval_classes"]):
        if not isinstance(entry, dict) or "name" not in entry:
            raise _fail(source, f"eval_classes[{i}] must be {{name: ..., color: [r, g, b]}}")
        if entry["name"] in eval_names:
            raise _fail(source, f"duplicate evaluation class {entry['name']!r}")
        eval_names.append(str(entry["name"]))
        colors.append(_color(entry.get("color"), source, f"eval_classes[{i}] ({entry['name']})"))

    raw_classes: dict[int, str] = {}
    raw_to_eval: dict[int, int] = {}
    for key, entry in data["raw_classes"].items():
        if not isinstance(key, int) or key < 0:
            raise _fail(source, f"raw class id {key!r} must be a non-negative integer")
        if not isinstance(entry, dict) or "name" not in entry or "eval" not in entry:
            raise _fail(source, f"raw_classes[{key}] must be {{name: ..., eval: <eval class or 0>}}")
        name = str(entry["name"])
        if name in raw_classes.values():
            raise _fail(source, f"duplicate raw class name {name!r}")
        ev = entry["eval"]
        if ev == 0 or ev == "ignore":
            ev_idx = 0
        elif ev in eval_names:
            ev_idx = eval_names.index(ev) + 1
        else:
            hint = difflib.get_close_matches(str(ev), eval_names, n=1)
            raise _fail(source, f"raw class {key} ({name}) maps to unknown evaluation class {ev!r}"
                        + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        raw_classes[key] = name
        raw_to_eval[key] = ev_idx

    allowed_dupes = set(data.get("allowed_duplicate_prompts", []) or [])
    categories: list[Category] = []
    seen_prompts: dict[str, list[int]] = {}
    pid = 0
    raw_by_name = {v: k for k, v in raw_classes.items()}
    for i, entry in enumerate(data["categories"]):
        if not isinstance(entry, dict) or not {"name", "raw", "prompts"} <= set(entry):
            raise _fail(source, f"categories[{i}] must be {{name, raw, prompts}}")
        cname = str(entry["name"])
        if any(c.name == cname for c in categories):
            raise _fail(source, f"duplicate category name {cname!r}")
        raw = entry["raw"]
        if isinstance(raw, int):
            if raw not in raw_classes:
                raise _fail(source, f"category {cname!r}: unknown raw class id {raw}")
            raw_id = raw
        elif raw in raw_by_name:
            raw_id = raw_by_name[raw]
        else:
            hint = difflib.get_close_matches(str(raw), list(raw_by_name), n=1)
            raise _fail(source, f"category {cname!r}: unknown raw class {raw!r}"
                        + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        prompts = entry["prompts"]
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise _fail(source, f"category {cname!r}: prompts must be a non-empty list of non-empty strings")
        for p in prompts:
            seen_prompts.setdefault(p, []).append(pid)
            pid += 1
        categories.append(Category(cname, raw_id, tuple(prompts), pid - len(prompts)))

    dupes = {p: ids for p, ids in seen_prompts.items() if len(ids) > 1}
    bad = sorted(set(dupes) - allowed_dupes)
    if bad:
        raise _fail(source, "duplicate prompts " + ", ".join(f"{p!r} (ids {dupes[p]})" for p in bad)
                    + "; list intended duplicates under allowed_duplicate_prompts")

    return ClassDictionary(
        name=str(data["name"]), version=int(data.get("version", 1)), dataset=str(data.get("dataset", data["name"])),
        eval_classes=eval_names, palette=np.array(colors, dtype=np.uint8), raw_classes=raw_classes,
        raw_to_eval_map=raw_to_eval, categories=categories, source=source, duplicate_prompts=dupes,
    )


def load_dictionary(name_or_path: str | Path) -> ClassDictionary:
    """Load a dictionary by name (``nuscenes`` -> config/vocab/nuscenes.yaml) or by path."""
    p = Path(name_or_path)
    if p.suffix not in (".yaml", ".yml"):
        candidates = [d / f"{name_or_path}.yaml" for d in vocab_dirs()]
        p = next((c for c in candidates if c.is_file()), candidates[0])
    if not p.is_file():
        available = sorted({x.stem for d in vocab_dirs() for x in d.glob("*.yaml")})
        raise ConfigError(f"class dictionary {name_or_path!r} not found at {p} (built-in: {available})")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"class dictionary {p}: invalid YAML: {e}") from None
    return parse_dictionary(data, str(p))
