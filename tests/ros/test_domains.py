"""The ROS tests' DDS domain reservation: two test sessions on one machine never share a domain."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ros_test_utils import DOMAIN_ID, reserve_domain

HERE = Path(__file__).resolve().parent
# a second test session: reserves a domain, prints it, and holds it while it reads a line from its stdin
SESSION = "from ros_test_utils import DOMAIN_ID; print(DOMAIN_ID, flush=True); input()"


def test_concurrent_sessions_get_different_domains():
    others = [subprocess.Popen([sys.executable, "-c", SESSION], cwd=HERE, text=True, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE) for _ in range(2)]
    try:
        domains = [int(p.stdout.readline()) for p in others]
    finally:
        for p in others:
            p.communicate("\n", timeout=60)
    assert len({DOMAIN_ID, *domains}) == 3 and all(1 <= d <= 101 for d in domains)


def test_a_second_reservation_in_one_process_is_another_domain():
    assert reserve_domain() != DOMAIN_ID
