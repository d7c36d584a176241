"""The dependency lock (tools/lockfile.py, requirements.in -> requirements.txt)."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("lockfile", ROOT / "tools" / "lockfile.py")
lockfile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lockfile)


def top_level_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


@pytest.mark.parametrize("top, lock", [("requirements.in", "requirements.txt"),
                                       ("requirements-gpu.in", "requirements-gpu.txt")])
def test_every_top_level_pin_is_in_the_lock_at_the_same_version(top, lock):
    wanted = top_level_pins(ROOT / top)
    locked = lockfile.read_lock(ROOT / lock)
    assert wanted, f"{top} pins nothing"
    for name, version in wanted.items():
        # torch==2.13.0 resolves to the local CPU build 2.13.0+cpu
        assert locked.get(name, "").split("+")[0] == version, f"{name}=={version} in {top}, {locked.get(name)} in {lock}"
    assert len(locked) > len(wanted), f"{lock} holds no transitive pins"


def test_this_venv_matches_the_committed_lock():
    assert lockfile.check(ROOT / "requirements.txt") == 0


def test_a_drifted_missing_or_extra_package_is_named(tmp_path, capsys):
    lock = tmp_path / "requirements.txt"
    lock.write_text("# header\nnumpy==1.26.4\nPyYAML==6.0.4\nzstandard==0.25.0\n")
    have = {"numpy": ("numpy", "2.3.5"), "pyyaml": ("PyYAML", "6.0.4"), "tqdm": ("tqdm", "4.70.1")}
    assert lockfile.check(lock, have) == 1
    message = capsys.readouterr().err
    assert message.count("\n") == 1, "one line"
    assert "numpy 2.3.5 (lock 1.26.4)" in message
    assert "zstandard missing (lock 0.25.0)" in message
    assert "tqdm 4.70.1 not in the lock" in message
    assert "yaml" not in message.lower(), "a package at its locked version is not reported"
    have_exact = {"numpy": ("numpy", "1.26.4"), "pyyaml": ("PyYAML", "6.0.4"), "zstandard": ("zstandard", "0.25.0")}
    assert lockfile.check(lock, have_exact) == 0


def test_a_line_that_is_not_an_exact_pin_is_refused(tmp_path):
    lock = tmp_path / "requirements.txt"
    lock.write_text("numpy>=1.26\n")
    with pytest.raises(SystemExit, match=r"requirements.txt:1: not a 'name==version' pin"):
        lockfile.read_lock(lock)
