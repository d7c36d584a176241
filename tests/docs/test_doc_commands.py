"""Every shell block of the user documentation (doc_blocks.doc_files) runs as written: the blocks of one file in
order, in a scratch copy of the repository, so `runs/` and `demo_out/` of the checkout are untouched. A block
marked `<!-- doc-test: skip (reason) -->` is checked for syntax and for the repository paths it names."""

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from doc_blocks import REPO, blocks, doc_files, missing_paths, repo_paths

ALL = [b for doc in doc_files() for b in blocks(doc)]
RUN = [b for b in ALL if b.skip_reason is None]
SKIPPED = [b for b in ALL if b.skip_reason is not None]
VENV_BIN = Path(sys.executable).parent
BLOCK_TIMEOUT_S = 300  # a block at the documented tiny sizes takes well under a minute on two cores
_workspaces: dict[Path, Path] = {}


def _workspace(doc: Path, tmp_path_factory) -> Path:
    """One scratch repository per documentation file: its blocks build on each other (synth, then teach, ...).

    Tracked files (27 MB) and the build outputs in models/ are copied, not linked: a block that writes or
    overwrites anything (a synthetic world in data/, an exported package in models/) writes into the copy, never
    into the checkout.  Only the venv is linked."""
    if doc not in _workspaces:
        ws = tmp_path_factory.mktemp(doc.stem)
        tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout
        for name in [n for n in tracked.split("\0") if n]:
            if (REPO / name).is_file():  # a tracked file deleted in the working tree is not copied
                (ws / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, ws / name)
        for entry in (REPO / "models").iterdir():
            if entry.is_file() and not (ws / "models" / entry.name).exists():
                shutil.copy2(entry, ws / "models" / entry.name)
        (ws / ".venv").symlink_to(Path(sys.prefix))
        _workspaces[doc] = ws
    return _workspaces[doc]


def test_blocks_are_found_and_the_heavy_ones_say_why():
    docs = {b.doc.name for b in ALL}
    assert {"README.md", "training.md", "ros.md", "export.md"} <= docs
    assert RUN and SKIPPED
    for b in SKIPPED:
        assert len(b.skip_reason) >= 8, f"{b.id}: say why the block is not run"


def test_private_topic_remaps_are_quoted():
    """`-r ~/input/points:=/x` unquoted: bash expands `~` to the home directory and the node hears nothing."""
    unquoted = re.compile(r"(?:-r|--remap)\s+~")
    assert unquoted.search("ros2 run ssov_ros ssov_segmenter --ros-args -r ~/input/points:=/points")
    assert not unquoted.search("ros2 run ssov_ros ssov_segmenter --ros-args -r '~/input/points:=/points'")
    assert [b.id for b in ALL if unquoted.search(b.text)] == []


@pytest.mark.parametrize("block", RUN, ids=lambda b: b.id)
def test_documented_block_runs(block, tmp_path_factory):
    ws = _workspace(block.doc, tmp_path_factory)
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", PYTHONUNBUFFERED="1")
    # its own process group, so that a block that hangs is stopped with everything it started
    proc = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", block.text], cwd=ws, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{block.id} still running after {BLOCK_TIMEOUT_S} s\n{err[-3000:]}")
    assert proc.returncode == 0, (f"{block.id} exited {proc.returncode}\n--- block\n{block.text}"
                                  f"--- stdout (tail)\n{out[-3000:]}\n--- stderr (tail)\n{err[-3000:]}")


@pytest.mark.parametrize("block", SKIPPED, ids=lambda b: b.id)
def test_skipped_block_parses_and_names_existing_paths(block):
    proc = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True)
    assert proc.returncode == 0, f"{block.id}: {proc.stderr}"
    assert not missing_paths(block.text), f"{block.id} names paths the repository does not have"


def test_path_check_catches_a_missing_file():
    text = ("ssov-train pretrain --cfg config/pretrain_sann.yaml  # config/not_checked.yaml\nls rosbags/nuscenes_sample\n"
            "ros2 launch ssov_ros replay.launch.py bag:=$PWD/rosbags/nuscenes_samplee ~/config/x.yaml\n")
    assert repo_paths(text) == ["config/pretrain_sann.yaml", "rosbags/nuscenes_sample", "rosbags/nuscenes_samplee"]
    assert missing_paths(text) == ["config/pretrain_sann.yaml", "rosbags/nuscenes_samplee"]
    assert missing_paths("ssov-export check models/ssov_synthetic_minkunet34c_w025.ssovpkg") == []
    assert missing_paths("ssov-export check models/nothing.ssovpkg") == ["models/nothing.ssovpkg"]


PARAMS_BLOCKS = [b for doc in doc_files() for b in blocks(doc, ("yaml",)) if "ros__parameters" in b.text]


@pytest.mark.parametrize("block", PARAMS_BLOCKS, ids=lambda b: b.id)
def test_documented_node_parameters_are_what_the_node_accepts(block, tmp_path):
    """A params-file example loads as the node loads its params file: names, types and ranges checked."""
    from ssov_ros.params import load_params_file

    path = tmp_path / "params.yaml"
    path.write_text(block.text)
    load_params_file(path)


LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def _anchors(doc: Path) -> set[str]:
    """GitHub's anchors of a markdown file's headings: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", doc.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_everything_a_doc_cites_is_in_the_repository(doc):
    text = doc.read_text()
    for target, fragment in LINK.findall(text):
        if re.match(r"[a-z]+://", target):
            continue
        assert (doc.parent / target).exists(), f"{doc.name} links to {target}, which is not in the repository"
        if fragment and target.endswith(".md"):
            assert fragment[1:] in _anchors(doc.parent / target), f"{doc.name}: no heading {fragment} in {target}"
    # the project's working notes live outside the repository: user docs must not send readers there
    for outside in ("../shared", "deps.md", "peers.md", "ros2.md", "architecture.md"):
        assert outside not in text, f"{doc.name} cites {outside}, which is not in the repository"
