"""Test-session environment: network safety for anything that starts rclpy, no model-hub waits."""

import os
import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Set before any test imports rclpy, also when pytest is run directly rather than through `make test`.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO / "config" / "fastdds_local.xml"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# gloo (DDP on CPU) would otherwise pick the interface of the machine's hostname: keep it on loopback.
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

SAMPLE_DIR = REPO / "data" / "nuscenes_sample"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE_DIR


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, grandchildren, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), ()):
            found.add(child)
            stack.append(child)
    return found


@pytest.fixture(autouse=True)
def no_process_outlives_its_test():
    """A test that fails half-way must not leave its node / replay / recorder running: in the same DDS domain it
    would answer the next test's discovery and take its messages (seen: a recorder orphaned by a failed test
    acknowledged the next run's clouds)."""
    before = _descendants(os.getpid())
    yield
    for pid in _descendants(os.getpid()) - before:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
