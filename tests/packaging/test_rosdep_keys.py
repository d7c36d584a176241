"""package.xml declares every third-party import with a rosdep key, through one documented table
(tests/packaging/rosdep_keys.yaml), so `rosdep install --from-paths src` provisions what the node imports."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from catkin_pkg.package import parse_package

REPO = Path(__file__).resolve().parents[2]
OWN = ("ssov_ros", "ssov_train", "ssov_export")
TRAINING = "$SSOV_TRAINING == 1"
# what the node, ssov-replay / ssov-record and the default (ONNX) backend import as their modules load
RUNTIME_MODULES = ["ssov_ros.node", "ssov_ros.replay", "ssov_ros.record", "ssov_ros.bags", "ssov_ros.overlay",
                   "ssov_export.onnx_backend"]


def table() -> dict:
    return yaml.safe_load((Path(__file__).parent / "rosdep_keys.yaml").read_text())


def third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> files importing it (absolute imports anywhere in the file, lazy ones included)."""
    files = [f for pkg in OWN for f in (REPO / pkg).rglob("*.py")] + sorted((REPO / "launch").glob("*.py"))
    found: dict[str, set[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in OWN:
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def declared() -> dict[str, str]:
    """exec_depend key -> its condition ("" when unconditional)."""
    pkg = parse_package(REPO / "package.xml")
    keys = [d.name for d in pkg.exec_depends]
    assert len(keys) == len(set(keys)), "a key declared twice"
    return {d.name: d.condition or "" for d in pkg.exec_depends}


def test_every_import_has_a_table_entry_and_every_entry_is_imported():
    imports, keys = third_party_imports(), table()
    missing = {m: sorted(f) for m, f in imports.items() if m not in keys}
    assert not missing, f"imports without a rosdep entry in rosdep_keys.yaml: {missing}"
    assert not set(keys) - set(imports), f"table entries nothing imports: {sorted(set(keys) - set(imports))}"


def test_package_xml_declares_exactly_the_table_keys_with_their_scope():
    deps = declared()
    expected = {}
    for module, entry in table().items():
        scope = entry["scope"]
        assert scope in ("runtime", "training", "none"), module
        if scope == "none":
            assert "key" not in entry and entry["why"], module  # no key exists: say where it is used
            continue
        key = entry["key"]
        assert key.endswith("-pip") == bool(entry.get("pip")), module  # rosdistro's convention for pip-only keys
        expected[key] = TRAINING if scope == "training" else ""
    extra = {k: c for k, c in deps.items() if k not in expected and k != "rviz2"}  # rviz2: launch files only
    assert not extra, f"package.xml exec_depends without a table entry: {extra}"
    assert {k: deps.get(k) for k in expected} == expected


def test_the_runtime_imports_are_runtime_keys():
    """Import what the node and its tools load, in a fresh interpreter: every third-party module of ours that
    gets imported must be a runtime (unconditional) dependency, or `rosdep install` leaves the node broken."""
    not_runtime = sorted(m for m, e in table().items() if e["scope"] != "runtime")
    # the non-runtime modules are made unimportable: what the node needs must import without them (numba, for
    # one, imports scipy when it is there and does without it)
    code = ("import importlib, importlib.abc, json, sys\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            f"    def find_spec(self, name, path=None, target=None):\n"
            f"        if name.split('.')[0] in {not_runtime!r}: raise ImportError('blocked: ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            f"for m in {RUNTIME_MODULES!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    ours = set(third_party_imports())  # direct imports only: numba's llvmlite is numba's business
    scopes = {m: e["scope"] for m, e in table().items()}
    wrong = sorted(m for m in loaded & ours if scopes[m] != "runtime")
    assert not wrong, f"loaded by the node / replay / record but not a runtime key: {wrong}"
    assert {"rclpy", "numpy", "yaml", "numba", "rcl_interfaces"} <= loaded  # the check sees imports
