"""Fixtures shared by the ROS tests."""

import pytest
from ros_test_utils import real_sample


@pytest.fixture(scope="session")
def frame():
    """The shipped real nuScenes sweep (34,688 points, 6 cameras), read once."""
    return real_sample()
