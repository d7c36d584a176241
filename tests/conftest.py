"""Test-session environment: network safety for anything that starts rclpy, no model-hub waits."""

import os
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
