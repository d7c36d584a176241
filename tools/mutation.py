"""Mutation testing of the critical modules with mutmut: `make mutation` (all modules, about an hour per module on
2 cores) or `make mutation MODULES="vocab projection"`.

Each module runs in its own scratch copy of the repository (the tracked files), where mutmut mutates only that
module's file(s) and runs only the module's own tests (the ``MODULES`` table), so modules do not disturb each
other and test selection stays small. Common mutmut options are in setup.cfg's [mutmut] section; this script
adds the per-module ones. Per module it prints killed / tested and the score, lists the survivors, and rewrites
the results table of docs/mutation.md (hand-written parts of that file, such as the reasons given for
equivalent mutants, live in tools/mutation_equivalent.txt and are kept).

Numba kernels are mutated too, compiled, in modules whose entry names their decorators (``kernels=``): see
:func:`rewrite_kernels` and tools/mutation_kernels.py. ``--collect`` reads an interrupted run's results.

A mutant is *killed* when a test fails (or it times out); *tested* = every mutant mutmut generated, less those
it skipped. The score = killed / tested; mutants listed as equivalent (the code behaves the same, so no test can
kill them) are reported separately and the score without them is printed too.
"""

from __future__ import annotations

import argparse
import ast
import configparser
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "mutation.md"
EQUIVALENT = REPO / "tools" / "mutation_equivalent.txt"


@dataclass(frozen=True)
class Module:
    files: tuple[str, ...]  # mutated
    tests: tuple[str, ...]  # the module's own tests (pytest node ids or paths)
    # Decorators (as written, e.g. "jit", "numba.njit") of the numba kernels in ``files`` that are mutated too,
    # compiled (see rewrite_kernels and tools/mutation_kernels.py); empty: decorated kernels are not mutated.
    kernels: tuple[str, ...] = ()
    # Only these functions of the files (by name; "Class." for all of a class's methods), when the critical part
    # is a few functions of a larger file: the other functions' mutants are neither run nor counted.
    functions: tuple[str, ...] = ()

    def mutant_patterns(self) -> list[str]:
        """mutmut's mutant-name patterns (fnmatch) of ``functions``: ``pkg.mod.x_func__mutmut_*`` for a function,
        ``pkg.mod.xǁClassǁ*`` for a class."""
        modules = [f.removesuffix(".py").replace("/", ".") for f in self.files]
        return [f"{m}.xǁ{fn[:-1]}ǁ*" if fn.endswith(".") else f"{m}.x_{fn}__mutmut_*"
                for m in modules for fn in self.functions]


JIT = ("jit", "fast_jit", "inline")  # ssov_train/jit.py's decorators

MODULES: dict[str, Module] = {
    "projection": Module(("ssov_train/geometry/projection.py",), ("tests/geometry/test_projection.py",)),
    "superpoints": Module(("ssov_train/superpoints.py",), ("tests/test_superpoints.py",)),
    "vocab": Module(("ssov_train/vocab/dictionary.py",), ("tests/vocab/test_dictionary.py",)),
    "losses": Module(("ssov_train/losses/tmp.py", "ssov_train/losses/lovasz.py"), ("tests/losses",)),
    "afi": Module(("ssov_train/afi.py",), ("tests/test_afi.py",), kernels=JIT),
    "voxelize": Module(("ssov_train/geometry/voxelize.py",), ("tests/geometry/test_voxelize.py",)),
    "kdtree": Module(("ssov_train/geometry/kdtree.py",), ("tests/geometry/test_kdtree.py",), kernels=JIT),
    "sampling": Module(("ssov_train/geometry/sampling.py",), ("tests/geometry/test_sampling.py",), kernels=JIT),
    "kernel_maps": Module(("ssov_export/kernel_maps.py",), ("tests/export/test_kernel_maps.py",
                                                           "tests/export/test_kernel_maps_compiled.py")),
    "onnx_graph": Module(("ssov_export/onnx_graph.py",), ("tests/export/test_onnx_graph.py",)),
    "pointcloud": Module(("ssov_ros/pointcloud.py",), ("tests/ros/test_pointcloud.py",)),
    "tf_buffer": Module(("ssov_ros/tf_buffer.py",), ("tests/ros/test_tf_buffer.py",)),
    "checkpoint": Module(("ssov_train/training/checkpoint.py",), ("tests/training/test_checkpoint.py",)),
    # the resume / checkpoint-restore part of the training loop
    "engine_resume": Module(("ssov_train/training/engine.py",), ("tests/training/test_engine_resume.py",),
                            functions=("_resume_state", "_restore", "_comparable_config", "RunLogger.")),
    "metrics": Module(("ssov_train/evaluation/metrics.py",), ("tests/evaluation/test_evaluate.py",)),
    "node_output": Module(("ssov_ros/output_cloud.py",), ("tests/ros/test_output_cloud.py",)),
}


def rewrite_kernels(source: str, decorators: tuple[str, ...], package: str) -> str:
    """``source`` with every top-level function decorated by exactly one of ``decorators`` turned into a plain
    function (which mutmut mutates) that tools/mutation_kernels.py compiles after mutmut's trampoline is built:

        @jit                        def k(...):
        def k(...):          ->         ...
            ...                     k = _mutmut_kernel(jit, k, globals(), helper=False)

    ``helper`` is True for a kernel that other kernels of the module call (its name must stay a numba
    dispatcher). Only the scratch copy is rewritten; the line numbers of a mutant's diff shift, its text not."""
    tree = ast.parse(source)
    kernels = {}
    for node in tree.body:
        if (isinstance(node, ast.FunctionDef) and len(node.decorator_list) == 1
                and ast.unparse(node.decorator_list[0]) in decorators):
            kernels[node.name] = node
    if not kernels:
        return source
    called = {n.id for k in kernels.values() for n in ast.walk(k) if isinstance(n, ast.Name) and n.id in kernels
              and n.id != k.name}
    lines = source.splitlines(keepends=True)
    # bottom-up, so earlier line numbers stay valid
    for name, node in sorted(kernels.items(), key=lambda kv: -kv[1].lineno):
        dec = node.decorator_list[0]
        lines.insert(node.end_lineno, f"{name} = _mutmut_kernel({ast.unparse(dec)}, {name}, globals(), "
                                      f"helper={name in called})\n")
        del lines[dec.lineno - 1:dec.end_lineno]
    first = min(node.decorator_list[0].lineno for node in kernels.values())
    lines.insert(first - 1, f"from {package}._mutmut_kernels import kernel as _mutmut_kernel\n")
    return "".join(lines)


def _scratch(name: str, module: Module, root: Path, fresh: bool = True) -> Path:
    """A copy of the tracked files with setup.cfg's [mutmut] section completed for ``module``; ``fresh=False``
    refreshes an earlier copy (tests written since) and keeps mutmut's results in it."""
    work = root / name
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
    else:
        changed = [f for f in module.files if (REPO / f).read_bytes() != (work / f).read_bytes()]
        if changed:
            raise SystemExit(f"{', '.join(changed)} changed since the last run of {name}: its mutants are "
                             f"numbered anew, run the module in full")
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / rel)
    if module.kernels:
        for rel in module.files:
            package = rel.split("/")[0]
            shutil.copy2(REPO / "tools" / "mutation_kernels.py", work / package / "_mutmut_kernels.py")
            path = work / rel
            path.write_text(rewrite_kernels(path.read_text(), module.kernels, package))
    cfg = configparser.ConfigParser()
    cfg.read(work / "setup.cfg")
    packages = sorted({f.split("/")[0] for f in module.files})
    cfg["mutmut"]["source_paths"] = "\n" + "\n".join(packages)
    cfg["mutmut"]["only_mutate"] = "\n" + "\n".join(module.files)
    cfg["mutmut"]["pytest_add_cli_args_test_selection"] = "\n" + "\n".join(module.tests)
    with open(work / "setup.cfg", "w") as f:
        cfg.write(f)
    return work


def _mutmut(work: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=work, text=True, capture_output=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"mutmut {' '.join(args)} failed in {work}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


_DIFFS = """
import json, sys
from mutmut.__main__ import find_mutant, get_diff_for_mutant
print(json.dumps({name: get_diff_for_mutant(name, path=find_mutant(name).path) for name in json.load(sys.stdin)}))
"""


def _diffs(work: Path, names: list[str]) -> dict[str, str]:
    """{mutant: its diff}, from one process (`mutmut show` per mutant costs a start-up each)."""
    proc = subprocess.run([sys.executable, "-c", _DIFFS], cwd=work, input=json.dumps(names), text=True,
                          capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"reading the mutants' diffs failed in {work}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _equivalent() -> dict[str, str]:
    """{mutant name: why it is equivalent} from tools/mutation_equivalent.txt ('name: reason' lines)."""
    if not EQUIVALENT.exists():
        return {}
    out = {}
    for line in EQUIVALENT.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, reason = line.partition(":")
            out[name.strip()] = reason.strip()
    return out


def run_module(name: str, root: Path, max_children: int, survivors: bool = False) -> dict:
    module = MODULES[name]
    patterns = module.mutant_patterns()
    rerun = patterns
    if survivors:  # the last run's survivors (less the equivalent ones) and what it left unchecked, tests as now
        if not (root / name / "mutants").is_dir():
            raise SystemExit(f"--survivors: no earlier run of {name} in {root}")
        listing = _mutmut(root / name, "results", "--all", "true")
        equivalent = _equivalent()
        rerun = [m for m, s in re.findall(r"^\s*(\S+): (.+)$", listing, flags=re.M)
                 if s not in ("killed", "timeout", "skipped") and m not in equivalent
                 and (not patterns or any(fnmatch.fnmatchcase(m, p) for p in patterns))]
        if not rerun:
            print(f"mutation {name}: no survivor to re-run", flush=True)
            return json.loads((root / f"{name}.json").read_text())
    work = _scratch(name, module, root, fresh=not survivors)
    # mutmut's own summary line goes to the terminal; the numbers come from its results listing
    run = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *rerun],
                         cwd=work, text=True)
    if run.returncode != 0:
        raise SystemExit(f"mutmut run failed for {name} (in {work})")
    return collect(name, root)


def _exit_codes(work: Path) -> dict[str, int | None]:
    """{mutant: the exit code of its test run} from mutmut's .meta files (None: not run)."""
    codes = {}
    for meta in (work / "mutants").rglob("*.meta"):
        module = meta.relative_to(work / "mutants").with_suffix("").with_suffix("").as_posix().replace("/", ".")
        for key, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            codes[key if key.startswith(module + ".") else f"{module}.{key}"] = code
    return codes


def collect(name: str, root: Path) -> dict:
    """The module's result from its scratch copy, as far as mutmut got: mutants it has not run yet (an
    interrupted run; ``--collect`` reads one) count as neither tested nor survived, and are reported."""
    module, work = MODULES[name], root / name
    patterns = module.mutant_patterns()
    listing = _mutmut(work, "results", "--all", "true")
    statuses = dict(re.findall(r"^\s*(\S+): (.+)$", listing, flags=re.M))
    if patterns:  # count the selected functions' mutants only (the others stay "not checked")
        statuses = {m: s for m, s in statuses.items() if any(fnmatch.fnmatchcase(m, p) for p in patterns)}
    equivalent = _equivalent()
    not_run = sum(s == "not checked" for s in statuses.values())
    # A compiled kernel does no bounds checks: a mutant whose tests die of a signal (segfault, bus error, abort;
    # mutmut calls the last two "suspicious") is detected.
    crashed = {m for m, code in _exit_codes(work).items() if code is not None and code < 0}
    statuses = {m: "crashed" if m in crashed else s for m, s in statuses.items()}
    detected = ("killed", "timeout", "crashed")
    survivors = sorted(m for m, s in statuses.items() if s not in (*detected, "skipped", "not checked"))
    diffs = _diffs(work, survivors)
    tested = sum(s not in ("skipped", "not checked") for s in statuses.values())
    killed = sum(s in detected for s in statuses.values())
    n_equivalent = sum(m in equivalent for m in survivors)
    files = [f"{f} ({', '.join(fn.rstrip('.') for fn in module.functions)})" if module.functions else f
             for f in module.files]
    result = dict(module=name, files=files, tests=list(module.tests), tested=tested, killed=killed,
                  not_run=not_run, score=killed / tested if tested else 0.0,
                  score_without_equivalent=killed / (tested - n_equivalent) if tested > n_equivalent else 0.0,
                  survivors={m: dict(status=statuses[m], equivalent=equivalent.get(m), diff=diffs[m])
                             for m in survivors})
    (root / f"{name}.json").write_text(json.dumps(result, indent=1))
    print(f"mutation {name}: {killed}/{tested} killed = {100 * result['score']:.1f}% "
          f"({100 * result['score_without_equivalent']:.1f}% without {n_equivalent} equivalent); "
          f"{len(survivors) - n_equivalent} survivor(s) left" + (f"; {not_run} mutant(s) not run" if not_run else ""),
          flush=True)
    return result


def _doc_parts(results_text: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """{module: its table row} and {module: its survivors section's lines} of docs/mutation.md's results part."""
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| (\w+) \|.*$", results_text, flags=re.M)
            if m.group(1) != "module"}
    sections: dict[str, list[str]] = {}
    for block in re.split(r"^(?=### )", results_text, flags=re.M):
        head = re.match(r"### (\w+): survivors", block)
        if head:
            sections[head.group(1)] = block.rstrip("\n").splitlines() + [""]
    return rows, sections


def write_doc(root: Path) -> None:
    """docs/mutation.md's results part from every module result found in ``root`` (earlier runs included); the
    rows and survivor lists of modules without a result there (run elsewhere) are kept as they are."""
    results = [json.loads(p.read_text()) for p in sorted(root.glob("*.json"))]
    equivalent = _equivalent()  # reasons as listed now (the list may have grown since a module's run)
    for r in results:
        for m, s in r["survivors"].items():
            s["equivalent"] = equivalent.get(m)
        n_equivalent = sum(s["equivalent"] is not None for s in r["survivors"].values())
        r["score_without_equivalent"] = r["killed"] / (r["tested"] - n_equivalent) if r["tested"] > n_equivalent else 0.0
    text = DOC.read_text() if DOC.exists() else "# Mutation testing\n\n<!-- results -->\n"
    head, _, old = text.partition("<!-- results -->")
    rows, sections = _doc_parts(old)
    for r in results:
        partial = f" ({r['not_run']} not run: partial)" if r.get("not_run") else ""
        rows[r["module"]] = (f"| {r['module']} | {', '.join(r['files'])} | {', '.join(r['tests'])} | {r['killed']} / "
                             f"{r['tested']}{partial} | {100 * r['score']:.1f}% | "
                             f"{100 * r['score_without_equivalent']:.1f}% |")
        sections.pop(r["module"], None)
        if not r["survivors"]:
            continue
        section = [f"### {r['module']}: survivors", ""]
        for m, s in r["survivors"].items():
            why = f"equivalent: {s['equivalent']}" if s["equivalent"] else f"{s['status']}, not yet killed"
            change = [ln for ln in s["diff"].splitlines() if ln.startswith(("+ ", "- ", "+", "-"))
                      and not ln.startswith(("+++", "---"))]
            shown = " / ".join(f"{x[0]} {x[1:].strip()}" for x in change[:2])[:200]
            section.append(f"- `{m}` ({why}): `{shown}`")
        sections[r["module"]] = section + [""]
    order = {name: i for i, name in enumerate(MODULES)}
    names = sorted(rows, key=lambda m: order.get(m, len(order)))
    lines = ["| module | files | tests | killed / tested | score | score without equivalent |",
             "| --- | --- | --- | --- | --- | --- |", *(rows[m] for m in names), ""]
    for m in sorted(sections, key=lambda m: order.get(m, len(order))):
        lines.extend(sections[m])
    DOC.write_text(head + "<!-- results -->\n\n" + "\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modules", nargs="*", help=f"modules to run (default all): {', '.join(MODULES)}")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("MUTATION_DIR", Path(tempfile.gettempdir())
                                                                       / "ssov-mutation")),
                    help="scratch directory (one copy of the repository per module, and the results)")
    ap.add_argument("--max-children", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--doc-only", action="store_true", help="rewrite docs/mutation.md from earlier results")
    ap.add_argument("--collect", action="store_true",
                    help="read the modules' results from their scratch copies as far as mutmut got (after an "
                         "interrupted run), without running mutmut")
    ap.add_argument("--survivors", action="store_true",
                    help="re-run only the survivors of each module's last run (after writing tests for them) and "
                         "the mutants an interrupted run left unchecked, in its scratch copy with the tests "
                         "refreshed; the module's source must be unchanged")
    args = ap.parse_args()
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        ap.error(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(MODULES)}")
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.doc_only:
        for name in args.modules or list(MODULES):
            if args.collect:
                collect(name, args.work)
            else:
                run_module(name, args.work, args.max_children, args.survivors)
    write_doc(args.work)
    for p in sorted(args.work.glob("*.json")):
        r = json.loads(p.read_text())
        print(f"{r['module']:12s} {100 * r['score']:5.1f}% killed ({r['killed']}/{r['tested']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
