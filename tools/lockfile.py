"""The dependency lock: write it from a resolved environment, or check an environment against it.

    python tools/lockfile.py write requirements.in > requirements.txt   # inside a venv resolved from requirements.in
    python tools/lockfile.py check requirements.txt                     # exit 1 with one line when the venv differs
    python tools/lockfile.py report requirements-gpu.in REPORT.json "FOR"  # a lock from `pip install --dry-run --report`

`make lock` runs ``write`` in a scratch venv that pip resolved from requirements.in alone; `make` installs
requirements.txt with --no-deps, so a fresh machine gets exactly the locked set; `make test` runs ``check`` first.
It writes the runtime lock the same way: requirements-runtime.in (what the node needs to run an exported model)
resolved with requirements.txt as constraints -> requirements-runtime.txt, a subset of the full lock, pin for pin.
Only the interpreter's own installers (pip, wheel) and the project itself are left out of the lock (setuptools is
in: torch and colcon-core bound its version, and a fresh venv's bundled copy is too old),
and so are distributions whose metadata another wheel installed (the ROS wheels carry their packages' egg-info):
pip cannot install those by name, they come with their wheel.
"""

from __future__ import annotations

import platform
import re
import sys
from importlib import metadata
from pathlib import Path

NOT_LOCKED = {"pip", "wheel", "ssov-ros"}


def normalise(name: str) -> str:
    """PEP 503 name normalisation: 'Shapely' and 'shapely', 'ros_kilted_rclpy' and 'ros-kilted-rclpy' are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _metadata_dir(dist: metadata.Distribution) -> str:
    path = getattr(dist, "_path", None)  # PathDistribution: its .dist-info / .egg-info directory
    return Path(path).name if path is not None else ""


def embedded() -> set[str]:
    """Metadata directories (``rclpy-9.1.2-py3.11.egg-info``) that another distribution's RECORD lists."""
    owned = set()
    for dist in metadata.distributions():
        own = _metadata_dir(dist)
        for file in dist.files or ():
            top = file.parts[0] if file.parts else ""
            if top != own and top.endswith((".egg-info", ".dist-info")):
                owned.add(top)
    return owned


def installed() -> dict[str, tuple[str, str]]:
    """{normalised name: (name as distributed, version)} of the running interpreter's environment, without the
    distributions that came inside another one's wheel."""
    found = {}
    inside_other = embedded()
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and normalise(name) not in NOT_LOCKED and _metadata_dir(dist) not in inside_other:
            found[normalise(name)] = (name, dist.version)
    return found


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if not match:
            raise SystemExit(f"{path}:{number}: not a 'name==version' pin: {raw!r}")
        pins[normalise(match.group(1))] = match.group(2)
    return pins


def write(top_level: Path) -> None:
    if "runtime" in top_level.stem:
        print(f"# The runtime lock: every package the node needs to run an exported model, resolved by pip from "
              f"{top_level.name}")
        print("# with requirements.txt as constraints (a subset of the full lock, pin for pin).")
        print("# Regenerate with `make lock` (never edit by hand); install it with --no-deps (docs/performance.md).")
        print(f"# Resolved for CPython {platform.python_version()} on {sys.platform}-{platform.machine()}.")
    else:
        print(f"# The full lock: every package the project's venv installs, resolved by pip from {top_level.name}.")
        print("# Regenerate with `make lock` (never edit by hand); `make` installs it with --no-deps.")
        print(f"# Resolved for CPython {platform.python_version()} on {sys.platform}-{platform.machine()}, "
              "CPU build of torch.")
    for _, (name, version) in sorted(installed().items()):
        print(f"{name}=={version}")


def check(lock_path: Path, have: dict[str, tuple[str, str]] | None = None) -> int:
    pins = read_lock(lock_path)
    have = installed() if have is None else have
    problems = []
    for key, version in sorted(pins.items()):
        if key not in have:
            problems.append(f"{key} missing (lock {version})")
        elif have[key][1] != version:
            problems.append(f"{key} {have[key][1]} (lock {version})")
    problems += [f"{have[key][0]} {have[key][1]} not in the lock" for key in sorted(set(have) - set(pins))]
    if problems:
        print(f"The venv differs from {lock_path.name}: {'; '.join(problems)}. "
              f"Rebuild it: rm -rf .venv && make test", file=sys.stderr)
        return 1
    return 0


def write_from_report(top_level: Path, report: Path, resolved_for: str) -> None:
    """A lock for another platform (the GPU machines' Python): pip resolved it without installing (--dry-run --report)."""
    import json

    print(f"# The full lock of {top_level.name}, resolved by pip (--dry-run --report) from {top_level.name}.")
    print("# Regenerate with `make lock-gpu` (never edit by hand); install with pip install --no-deps -r <this file>.")
    print(f"# Resolved for {resolved_for}.")
    items = json.loads(report.read_text())["install"]
    for item in sorted(items, key=lambda i: normalise(i["metadata"]["name"])):
        print(f"{item['metadata']['name']}=={item['metadata']['version']}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "report":
        write_from_report(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
    elif len(sys.argv) != 3 or sys.argv[1] not in ("write", "check"):
        raise SystemExit(__doc__)
    elif sys.argv[1] == "write":
        write(Path(sys.argv[2]))
    else:
        sys.exit(check(Path(sys.argv[2])))
