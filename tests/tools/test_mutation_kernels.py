"""`make mutation` mutates numba kernels (tools/mutation.py rewrite_kernels + tools/mutation_kernels.py): a tiny
module with a helper kernel, a kernel calling it and a plain function goes through the rewrite and mutmut's own
mutation; each mutant must then run compiled (a numba dispatcher, not Python) and give what its mutated source
says, by hand, while the original gives the original value."""

import importlib
import sys
from pathlib import Path

import pytest

mutmut_file_mutation = pytest.importorskip("mutmut.mutation.file_mutation")
from mutmut.mutation.trampoline import set_mutant_under_test  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
from mutation import rewrite_kernels  # noqa: E402

SOURCE = '''
import numba

jit = numba.njit(cache=False)
inline = numba.njit(inline="always")


@inline
def _plus_one(x):
    return x + 1


@jit
def kernel(n):
    total = 0
    for i in range(n):
        total += _plus_one(i)
    return total


def plain(n):
    return kernel(n) * 2
'''


def test_rewrite_turns_decorated_kernels_into_plain_functions_compiled_afterwards():
    out = rewrite_kernels(SOURCE, ("jit", "inline"), "pkg")
    assert "@jit" not in out and "@inline" not in out
    assert "_plus_one = _mutmut_kernel(inline, _plus_one, globals(), helper=True)" in out  # kernel calls it
    assert "kernel = _mutmut_kernel(jit, kernel, globals(), helper=False)" in out
    assert out.index("from pkg._mutmut_kernels import kernel as _mutmut_kernel") < out.index("def _plus_one")
    assert out.index("def kernel") < out.index("kernel = _mutmut_kernel")  # after its body
    assert "def plain(n):\n    return kernel(n) * 2" in out
    assert rewrite_kernels(SOURCE, ("numba.njit",), "pkg") == SOURCE  # no kernel with that decorator


@pytest.fixture
def mutated_module(tmp_path, monkeypatch):
    """The rewritten, mutmut-mutated module imported as ``pkg.tiny``, and its mutants' names."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "_mutmut_kernels.py").write_text((REPO / "tools" / "mutation_kernels.py").read_text())
    (tmp_path / "setup.cfg").write_text("[mutmut]\nsource_paths = pkg\n")  # mutmut reads its config from the cwd
    monkeypatch.chdir(tmp_path)
    mutated = mutmut_file_mutation.mutate_file_contents("tiny.py", rewrite_kernels(SOURCE, ("jit", "inline"), "pkg"))
    (package / "tiny.py").write_text(mutated.code)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "pkg" or m.startswith("pkg.")]:
        monkeypatch.delitem(sys.modules, name)
    module = importlib.import_module("pkg.tiny")
    yield module, mutated.mutant_names, mutated.code
    set_mutant_under_test(None)
    monkeypatch.delenv("MUTANT_UNDER_TEST", raising=False)


def _mutant_body(code, name):
    return code.split(f"def {name}(")[1].split("\ndef ")[0]


def test_kernel_and_helper_mutants_run_compiled(mutated_module, monkeypatch):
    module, names, code = mutated_module
    helper_mutants = [n for n in names if n.startswith("x__plus_one__mutmut_")]
    kernel_mutants = [n for n in names if n.startswith("x_kernel__mutmut_")]
    assert helper_mutants and kernel_mutants  # the decorated functions were mutated
    monkeypatch.setenv("MUTANT_UNDER_TEST", "")
    assert module.kernel(4) == 1 + 2 + 3 + 4 and module.plain(4) == 20
    assert hasattr(module._plus_one, "signatures")  # the helper stays a numba dispatcher for its callers
    # `x + 1` -> `x - 1` in the helper: the kernel sums -1 + 0 + 1 + 2 = 2 (compiled against the mutant)
    plus_to_minus = next(n for n in helper_mutants if "return x - 1" in _mutant_body(code, n))
    monkeypatch.setenv("MUTANT_UNDER_TEST", f"pkg.tiny.{plus_to_minus}")
    assert module.kernel(4) == 2 and module.plain(4) == 4
    # `total = 0` -> `total = 1` in the kernel: 1 + (1 + 2 + 3 + 4)
    start_at_one = next(n for n in kernel_mutants if "total = 1" in _mutant_body(code, n))
    monkeypatch.setenv("MUTANT_UNDER_TEST", f"pkg.tiny.{start_at_one}")
    assert module.kernel(4) == 11
    compiled = module.mutants_x_kernel__mutmut[start_at_one]._compiled[None]
    assert compiled.signatures  # a numba dispatcher ran it, not the Python function
    monkeypatch.setenv("MUTANT_UNDER_TEST", "")
    assert module.kernel(4) == 10  # back to the original
