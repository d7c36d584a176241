"""The slim runtime against the full environment: installed size, import time of the node, and the node's start-up
time and memory before its first cloud, in one run (docs/performance.md "Slim runtime").

Environments (each is a Python interpreter; the project source it runs is that interpreter's ``ssov_ros``):

* ``slim``: a venv with requirements-runtime.txt only (``--slim``, docs/performance.md has the two commands);
* ``full``: the project's .venv (requirements.txt: torch, spconv, open_clip, ...), running the same source;
* ``before`` (with ``--before-src DIR``): the full venv running another checkout of the project on PYTHONPATH,
  e.g. the commit before the runtime was made torch-free (its node imported torch through the input features).

Every measurement is a fresh process started from a neutral directory, the configurations interleaved repeat by
repeat so machine load hits them alike; medians are printed (min in brackets).  Start-up = process spawn until
the node is constructed (parameters, model package opened, warm-up segmentation with AFI done), i.e. ready for
its first cloud; RSS is read at that moment.  One unmeasured start per environment first fills numba's cache.

    .venv/bin/python bench/bench_runtime.py --slim /tmp/ssov-slim/bin/python [--before-src /tmp/ssov-base] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PACKAGE = REPO / "models" / "ssov_synthetic_minkunet34c_w025.ssovpkg"
HEAVY = ("torch", "spconv", "scipy", "open_clip", "sklearn", "tqdm", "nuscenes")

IMPORT = """
import json, sys, time
t = time.perf_counter()
import ssov_ros.node
seconds = time.perf_counter() - t
rss = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:")][0]
print(json.dumps({"import_s": seconds, "rss_kb": rss, "heavy": sorted({m.partition(".")[0] for m in sys.modules}
                  & set(%r)), "source": ssov_ros.__file__}))
""" % (HEAVY,)

STARTUP = """
import json, sys, time
t = time.perf_counter()
import rclpy
from rclpy.parameter import Parameter
from ssov_ros.node import SegmenterNode
imported = time.perf_counter() - t
rclpy.init()
node = SegmenterNode(parameter_overrides=[Parameter("model.path", value=sys.argv[1])])
status = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in open("/proc/self/status"))
          if k in ("VmRSS", "VmHWM")}
print("READY " + json.dumps({"import_s": imported, "construct_s": time.perf_counter() - t - imported,
                             "warmup_ms": node.warmup_ms, "rss_kb": status["VmRSS"], "hwm_kb": status["VmHWM"],
                             "backend": node.segmenter.backend.describe()}), flush=True)
node.destroy_node()
rclpy.shutdown()
"""


def tree_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (links not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def venv_of(python: str) -> Path:
    return Path(subprocess.run([python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True,
                               check=True).stdout.strip())


def child_env(src: str | None) -> dict:
    env = dict(os.environ)
    # DDS stays on this machine (the node never sets these itself), no model-hub waits
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO / "config" / "fastdds_local.xml"))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["ROS_DOMAIN_ID"] = str(30 + os.getpid() % 60)
    env.pop("PYTHONPATH", None)
    if src:
        env["PYTHONPATH"] = src
    return env


def run_import(python: str, src: str | None, cwd: str) -> dict:
    out = subprocess.run([python, "-c", IMPORT], capture_output=True, text=True, env=child_env(src), cwd=cwd)
    if out.returncode:
        raise SystemExit(f"{python}: importing the node failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_startup(python: str, src: str | None, cwd: str, package: Path) -> dict:
    t = time.perf_counter()
    proc = subprocess.Popen([python, "-c", STARTUP, str(package)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=child_env(src), cwd=cwd)
    for line in proc.stdout:
        if line.startswith("READY "):
            result = json.loads(line[6:])
            result["startup_s"] = time.perf_counter() - t
            break
    else:
        proc.wait()
        raise SystemExit(f"{python}: the node did not start:\n{proc.stderr.read()[-2000:]}")
    proc.communicate(timeout=120)
    return result


def med(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slim", required=True, help="python of the slim runtime venv")
    ap.add_argument("--full", default=sys.executable, help="python of the full venv (default: this one)")
    ap.add_argument("--before-src", help="another checkout to run in the full venv as 'before'")
    ap.add_argument("--package", type=Path, default=DEFAULT_PACKAGE, help="model package (default: `make export`'s)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if not (args.package / "model.yaml").is_file():
        raise SystemExit(f"{args.package}: no model package; run `make export`")
    envs = {"slim": (args.slim, None), "full": (args.full, None)}  # python, source on PYTHONPATH (None: installed)
    if args.before_src:
        envs["before"] = (args.full, str(Path(args.before_src).resolve()))

    print("installed size (whole venv; site-packages)")
    for name in ("slim", "full"):
        prefix = venv_of(envs[name][0])
        site = next(prefix.glob("lib/python3*/site-packages"))
        print(f"  {name:7s} {tree_size(prefix) / 2**20:8.0f} MiB; {tree_size(site) / 2**20:8.0f} MiB   ({prefix})")

    with tempfile.TemporaryDirectory() as cwd:
        for name, (python, src) in envs.items():  # the source each runs, and numba's cache filled
            info = run_import(python, src, cwd)
            print(f"  {name}: ssov_ros from {Path(info['source']).parent.parent}; heavy modules imported: "
                  f"{info['heavy'] or 'none'}")
            run_startup(python, src, cwd, args.package)
        imports: dict[str, list[dict]] = {n: [] for n in envs}
        starts: dict[str, list[dict]] = {n: [] for n in envs}
        for _ in range(args.repeats):
            for name, (python, src) in envs.items():
                imports[name].append(run_import(python, src, cwd))
                starts[name].append(run_startup(python, src, cwd, args.package))

    print(f"\nimport ssov_ros.node, fresh process, {args.repeats} repeats: median [min]")
    print(f"  {'env':7s} {'import s':>14s} {'RSS MiB':>14s}")
    for name in envs:
        print(f"  {name:7s} {med([r['import_s'] for r in imports[name]]):>14s} "
              f"{med([r['rss_kb'] / 1024 for r in imports[name]]):>14s}")
    print(f"\nnode start-up with {args.package.name} ({starts['slim'][0]['backend']}), until ready for the first "
          f"cloud: median [min]")
    print(f"  {'env':7s} {'start-up s':>14s} {'imports s':>14s} {'construct s':>14s} {'warm-up ms':>14s} "
          f"{'RSS MiB':>14s} {'peak RSS MiB':>14s}")
    for name in envs:
        s = starts[name]
        print(f"  {name:7s} {med([r['startup_s'] for r in s]):>14s} {med([r['import_s'] for r in s]):>14s} "
              f"{med([r['construct_s'] for r in s]):>14s} {med([r['warmup_ms'] for r in s]):>14s} "
              f"{med([r['rss_kb'] / 1024 for r in s]):>14s} {med([r['hwm_kb'] / 1024 for r in s]):>14s}")
    ref = statistics.median(r["startup_s"] for r in starts["slim"])
    for name in envs:
        if name != "slim":
            ratio = statistics.median(r["startup_s"] for r in starts[name]) / ref
            rss = (statistics.median(r["rss_kb"] for r in starts[name])
                   / statistics.median(r["rss_kb"] for r in starts["slim"]))
            print(f"  {name} / slim: start-up x{ratio:.2f}, RSS x{rss:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
