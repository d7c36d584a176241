"""docs/parameters.md is generated from the node's declared parameters and is current."""

import json
import sys

from doc_blocks import REPO

from ssov_ros.params import ModelParams, flat_defaults

sys.path.insert(0, str(REPO / "tools"))
import gen_param_docs  # noqa: E402


def test_parameters_doc_is_current(capsys):
    assert gen_param_docs.main(["--check"]) == 0, capsys.readouterr().err


def documented_rows(markdown: str) -> dict[str, tuple[str, str, str]]:
    """The generated tables read back: name -> (default cell, runtime cell, meaning)."""
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 6 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[2].strip("`"), cells[4], cells[5])
    return rows


def test_every_declared_parameter_is_documented_with_its_default_and_a_meaning():
    documented = documented_rows((REPO / "docs" / "parameters.md").read_text())
    expected = flat_defaults()  # what the node declares, independent of the generator
    assert set(documented) == set(expected)
    for name, value in expected.items():
        default, runtime, meaning = documented[name]
        assert default == ("unset (NaN)" if value is None else json.dumps(value)), name
        assert runtime in ("yes", "no (read-only)"), name
        assert len(meaning) > 10, f"{name} has no meaning"
    assert documented["model.path"][1] == "no (read-only)" and documented["input.max_range"][1] == "yes"


def test_a_changed_default_makes_the_doc_stale(monkeypatch):
    text = gen_param_docs.render()
    monkeypatch.setattr(ModelParams.__dataclass_fields__["threads"], "default", 7)
    changed = gen_param_docs.render()
    assert changed != text and "| `model.threads` | integer | `7` |" in changed
