"""The shell blocks of the user documentation (README.md, docs/*.md, the data folders' READMEs), as the doc
tests run them.

A block is a fenced ```bash block. A block that cannot run here (a GPU, TensorRT, nuScenes, teacher weights, a
ROS 2 install) is preceded by a marker comment saying why, and is then only checked for syntax and for the
repository paths it names:

    <!-- doc-test: skip (needs a GPU with TensorRT) -->
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```(\S*)\s*$")
SKIP = re.compile(r"^<!--\s*doc-test:\s*skip\s*\((.+)\)\s*-->\s*$")
# tracked top-level folders whose paths a command may name; a path under them must exist in the repository
TRACKED_ROOTS = ("config", "launch", "rosbags", "tools", "bench", "docs", "tests", "models", "ssov_train",
                 "ssov_ros", "ssov_export", "data/nuscenes_sample")
PATH = re.compile(r"(?:(?<=\$PWD/)|(?<![\w/.$~-]))((?:%s)/[\w./*-]*[\w*])" % "|".join(re.escape(r) for r in TRACKED_ROOTS))


@dataclass
class Block:
    doc: Path  # the markdown file
    line: int  # 1-based line of the opening fence
    text: str
    skip_reason: Optional[str]  # None: the block is run

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def doc_files() -> list[Path]:
    """The user documentation: the front README, docs/, and the READMEs of the data folders."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
            *(REPO / d / "README.md" for d in ("models", "launch", "rosbags"))]


def blocks(doc: Path, languages: tuple[str, ...] = ("bash", "sh", "shell")) -> list[Block]:
    """Every fenced block of ``doc`` in one of ``languages``, in order, with the skip reason of a marker on the line
    before it."""
    out: list[Block] = []
    lines = doc.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise ValueError(f"{doc}:{i + 1}: unclosed code fence")
        if m.group(1) in languages:
            marker = SKIP.match(lines[i - 1]) if i > 0 else None
            out.append(Block(doc, i + 1, "\n".join(lines[i + 1:end]) + "\n", marker.group(1) if marker else None))
        i = end + 1
    return out


def repo_paths(text: str) -> list[str]:
    """Repository paths a block names (config/x.yaml, rosbags/synthetic_street, data/nuscenes_sample/*.pcd.bin)."""
    code = "\n".join(line.split(" #", 1)[0] for line in text.splitlines())  # comments are prose
    return sorted(set(PATH.findall(code)))


def missing_paths(text: str) -> list[str]:
    """The named repository paths that do not exist. An exported package (models/<x>.ssovpkg) counts as present
    when the checkpoint it is exported from is tracked, since `make export` / `ssov-export onnx` builds it."""
    missing = []
    for path in repo_paths(text):
        if glob.glob(str(REPO / path)):
            continue
        package = re.match(r"(models/[\w.-]+)\.ssovpkg(/.*)?$", path)
        if package and (REPO / f"{package.group(1)}.pt").is_file():
            continue
        missing.append(path)
    return missing
