"""docs/parameters.md is generated from the node's declared parameters and is current."""

import json
import sys

from doc_blocks import REPO

from ssov_ros.params import ModelParams, flat_defaults

sys.path.insert(0, str(REPO / "tools"))
import gen_param_docs  # noqa: E402


def test_parameters_doc_is_current(capsys):
    assert gen_param_docs.main(["--check"]) == 0, capsys.readouterr().err


def test_every_declared_parameter_is_documented_with_its_default_and_a_meaning():
    documented = {name: (default, text) for _, entries in gen_param_docs.rows() for name, _, default, text in entries}
    expected = flat_defaults()  # what the node declares, independent of the generator's own walk
    assert set(documented) == set(expected)
    for name, value in expected.items():
        default, text = documented[name]
        assert default == json.dumps(value), name
    # descriptions come from the comments in params.py; a few fields have none yet (the table says so by a blank)
    described = [n for n, (_, text) in documented.items() if text]
    assert len(described) >= len(documented) // 2


def test_a_changed_default_makes_the_doc_stale(monkeypatch):
    text = gen_param_docs.render()
    monkeypatch.setattr(ModelParams.__dataclass_fields__["threads"], "default", 7)
    changed = gen_param_docs.render()
    assert changed != text and "| `model.threads` | int | `7` |" in changed
