"""The runtime lock (requirements-runtime.txt) is the full lock's pins for what the node needs, and nothing of the
training stack."""

import importlib.util
import re

from runtime_blocker import BLOCKED
from runtime_scenario import REPO

_spec = importlib.util.spec_from_file_location("lockfile", REPO / "tools" / "lockfile.py")
lockfile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lockfile)

# the distribution of each import the runtime test blocks
DISTRIBUTION_OF = {"torch": "torch", "torchvision": "torchvision", "spconv": "spconv", "cumm": "cumm",
                   "open_clip": "open-clip-torch", "nuscenes": "nuscenes-devkit", "tqdm": "tqdm",
                   "sklearn": "scikit-learn", "scipy": "scipy"}
# ... and the offline tools' libraries (training, plots, bag files, datasets)
TRAINING_ONLY = {*DISTRIBUTION_OF.values(), "matplotlib", "timm", "tensorboard", "rosbags", "pycocotools", "shapely"}


def test_runtime_lock_is_the_full_locks_pins_without_the_training_stack():
    full = lockfile.read_lock(REPO / "requirements.txt")
    runtime = lockfile.read_lock(REPO / "requirements-runtime.txt")
    assert {name: (version, full.get(name)) for name, version in runtime.items() if full.get(name) != version} == {}
    assert set(DISTRIBUTION_OF) == set(BLOCKED)
    assert set(DISTRIBUTION_OF.values()) <= set(full)  # the names are the lock's own
    assert not TRAINING_ONLY & set(runtime)


def test_every_top_level_runtime_requirement_is_locked_as_written():
    for raw in (REPO / "requirements-runtime.in").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line).groups()
            assert lockfile.read_lock(REPO / "requirements-runtime.txt").get(lockfile.normalise(name)) == version, line
