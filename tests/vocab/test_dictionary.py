"""The class dictionaries are data; these tests pin the facts of method.md §2 and the validation."""

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from ssov_train.errors import ConfigError
from ssov_train.vocab import load_dictionary
from ssov_train.vocab.dictionary import VOCAB_DIR, parse_dictionary


@pytest.fixture(scope="module")
def nus():
    return load_dictionary("nuscenes")


def test_reference_vocabulary_shape(nus):
    assert len(nus.categories) == 31
    assert nus.num_prompts == 175
    assert nus.num_classes == 17
    assert set(nus.duplicate_prompts) == {"scooter", "pavilion"}


@pytest.mark.parametrize("prompt_id, raw_name, eval_name", [
    (0, "vehicle.car", "car"), (8, "vehicle.truck", "truck"), (15, "vehicle.bus.bendy", "bus"),
    (18, "vehicle.bus.rigid", "bus"), (35, "static_object.bicycle_rack", "ignore"),
    (51, "human.pedestrian.adult", "pedestrian"), (84, "movable_object.trafficcone", "traffic_cone"),
    (96, "flat.driveable_surface", "driveable_surface"), (104, "flat.sidewalk", "sidewalk"),
    (108, "flat.terrain", "terrain"), (114, "flat.other", "other_flat"), (118, "static.manmade", "manmade"),
    (164, "static.manmade", "manmade"), (165, "static.vegetation", "vegetation"), (170, "static.other", "ignore"),
    (174, "vehicle.ego", "ignore"),
])
def test_prompt_to_raw_to_eval(nus, prompt_id, raw_name, eval_name):
    assert nus.raw_classes[int(nus.prompt_to_raw[prompt_id])] == raw_name
    assert nus.class_names[int(nus.prompt_to_eval[prompt_id])] == eval_name


def test_raw_to_eval_matches_reference_map(nus):
    expected = {0: 0, 1: 0, 5: 0, 7: 0, 8: 0, 10: 0, 11: 0, 13: 0, 19: 0, 20: 0, 29: 0, 31: 0, 9: 1, 14: 2, 15: 3,
                16: 3, 17: 4, 18: 5, 21: 6, 2: 7, 3: 7, 4: 7, 6: 7, 12: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
                27: 14, 28: 15, 30: 16}
    assert {r: int(nus.raw_to_eval[r]) for r in range(32)} == expected
    assert nus.map_raw(np.array([17, 99, -1, 30])).tolist() == [4, 0, 0, 16]


def test_same_category_mask(nus):
    same = nus.same_category
    assert same.shape == (175, 175) and same[0, 7] and not same[7, 8]
    assert same[28, 29] and not same[28, 74]  # the two "scooter" prompts sit in different categories


def test_semantickitti_vocabulary():
    kitti = load_dictionary("semantickitti")
    assert kitti.num_classes == 20
    assert kitti.map_raw(np.array([252, 60, 52, 10, 259, 81])).tolist() == [1, 9, 0, 1, 5, 19]


def _raw_doc():
    return yaml.safe_load((VOCAB_DIR / "nuscenes.yaml").read_text())


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["categories"][0]["prompts"].append("bus"), "duplicate prompts 'bus'"),
    (lambda d: d["categories"][0].__setitem__("raw", "vehicle.carr"), "did you mean 'vehicle.car'"),
    (lambda d: d["raw_classes"][17].__setitem__("eval", "cars"), "unknown evaluation class 'cars'"),
    (lambda d: d["categories"].append(copy.deepcopy(d["categories"][0])), "duplicate category name 'car'"),
    (lambda d: d.__setitem__("colour", 1), "unknown keys ['colour']"),
    (lambda d: d["eval_classes"][0].__setitem__("color", [300, 0, 0]), "color must be"),
])
def test_validation_errors(mutate, message):
    doc = _raw_doc()
    mutate(doc)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_dictionary(doc, "test.yaml")


def test_missing_dictionary_names_builtins(tmp_path):
    with pytest.raises(ConfigError, match="built-in"):
        load_dictionary("klingon")


def test_raw_ids_at_and_beyond_the_table_length_map_to_ignore():
    """SemanticKITTI's largest raw id is 259 (moving-other-vehicle), so its table has 260 rows: raw id 260, exactly
    the table length, is outside it (ignore), like 261 and -1; 259 itself still maps."""
    kitti = load_dictionary("semantickitti")
    assert len(kitti.raw_to_eval) == 260
    assert kitti.map_raw(np.array([259, 260, 261, -1])).tolist() == [5, 0, 0, 0]


# ---- a hand-written dictionary: every table and every validation message, worked out by hand -------------------

def _tiny() -> dict:
    return {"name": "tiny",
            "eval_classes": [{"name": "car", "color": [255, 0, 0]}, {"name": "road", "color": [0, 0, 255]}],
            "raw_classes": {0: {"name": "noise", "eval": 0}, 1: {"name": "vehicle.car", "eval": "car"},
                            2: {"name": "flat.road", "eval": "road"}, 4: {"name": "sky", "eval": "ignore"}},
            "categories": [{"name": "car", "raw": "vehicle.car", "prompts": ["car", "sedan"]},
                           {"name": "road", "raw": 2, "prompts": ["road"]},
                           {"name": "sky", "raw": "sky", "prompts": ["sky", "cloud"]}]}


def test_hand_written_dictionary_tables():
    d = parse_dictionary(_tiny(), "tiny.yaml")
    assert (d.name, d.version, d.dataset, d.source) == ("tiny", 1, "tiny", "tiny.yaml")
    assert d.num_classes == 3 and d.class_names == ["ignore", "car", "road"]
    assert d.palette.dtype == np.uint8 and d.palette.tolist() == [[0, 0, 0], [255, 0, 0], [0, 0, 255]]
    assert d.prompts == ["car", "sedan", "road", "sky", "cloud"] and d.num_prompts == 5
    assert [(c.name, c.raw_class, c.prompts, c.first_prompt) for c in d.categories] == [
        ("car", 1, ("car", "sedan"), 0), ("road", 2, ("road",), 2), ("sky", 4, ("sky", "cloud"), 3)]
    assert d.prompt_to_category.tolist() == [0, 0, 1, 2, 2]
    assert d.raw_to_eval.tolist() == [0, 1, 2, 0, 0]  # raw id 3 is not listed: ignore
    assert d.prompt_to_raw.tolist() == [1, 1, 2, 4, 4]
    assert d.prompt_to_eval.tolist() == [1, 1, 2, 0, 0]
    assert d.same_category.tolist() == [[True, True, False, False, False], [True, True, False, False, False],
                                        [False, False, True, False, False], [False, False, False, True, True],
                                        [False, False, False, True, True]]
    assert d.map_raw(np.array([[0, 1, 2], [3, 4, 5]])).tolist() == [[0, 1, 2], [0, 0, 0]]
    assert d.map_raw(np.array([-1, 4, 5])).dtype == np.uint8
    assert d.duplicate_prompts == {}
    assert d.eval_index("ignore") == 0 and d.eval_index("road") == 2
    assert d.raw_index("noise") == 0 and d.raw_index("flat.road") == 2
    assert d.category_of_raw(4).name == "sky" and d.category_of_raw(1).name == "car"
    with pytest.raises(KeyError, match=r"tiny: no evaluation class 'bus'; known: \['car', 'road'\]"):
        d.eval_index("bus")
    with pytest.raises(KeyError, match=r"tiny: no raw class 'vehicle.bus'"):
        d.raw_index("vehicle.bus")
    with pytest.raises(KeyError, match=r"tiny: no category maps to raw class 0 \(noise\)"):
        d.category_of_raw(0)
    with pytest.raises(KeyError, match=r"tiny: no category maps to raw class 7 \(None\)"):
        d.category_of_raw(7)
    explicit = parse_dictionary({**_tiny(), "version": 3, "dataset": "tinyset", "ignore_index": 0,
                                 "ignore_color": [1, 2, 3]}, "t")
    assert (explicit.version, explicit.dataset, explicit.palette[0].tolist()) == (3, "tinyset", [1, 2, 3])



def test_eval_classes_of_a_raw_group(nus):
    """The nuScenes taxonomy's top-level groups, as its category list names them."""
    assert nus.eval_classes_in_group("flat") == ["driveable_surface", "other_flat", "sidewalk", "terrain"]
    assert nus.eval_classes_in_group("vehicle") == ["bicycle", "bus", "car", "construction_vehicle", "motorcycle",
                                                    "trailer", "truck"]  # vehicle.ego and emergency map to ignore
    assert nus.eval_classes_in_group("human") == ["pedestrian"]
    assert nus.eval_classes_in_group("plane") == []
    assert load_dictionary("semantickitti").eval_classes_in_group("flat") == []  # no dotted raw names
    mixed = parse_dictionary({**_tiny(), "raw_classes": {**_tiny()["raw_classes"], 3: {"name": "road", "eval": "road"}}})
    assert mixed.eval_classes_in_group("flat") == []  # road also comes from a raw class outside flat.*
    assert mixed.eval_classes_in_group("vehicle") == ["car"]

def test_allowed_duplicate_prompts_are_kept_with_their_ids():
    doc = _tiny()
    doc["categories"][1]["prompts"] = ["road", "car"]  # prompt 3 repeats prompt 0
    doc["allowed_duplicate_prompts"] = ["car"]
    d = parse_dictionary(doc, "t")
    assert d.duplicate_prompts == {"car": [0, 3]} and d.prompts == ["car", "sedan", "road", "car", "sky", "cloud"]
    doc["allowed_duplicate_prompts"] = None
    with pytest.raises(ConfigError) as err:
        parse_dictionary(doc, "t")
    assert str(err.value) == ("class dictionary t: duplicate prompts 'car' (ids [0, 3]); list intended duplicates "
                              "under allowed_duplicate_prompts")


def _set(path, value):
    def mutate(doc):
        *parents, last = path
        node = doc
        for key in parents:
            node = node[key]
        node[last] = value
    return mutate


def _delete(*keys):
    def mutate(doc):
        for key in keys:
            del doc[key]
    return mutate


KNOWN = ("['allowed_duplicate_prompts', 'categories', 'dataset', 'eval_classes', 'ignore_color', 'ignore_index', "
         "'name', 'raw_classes', 'version']")


@pytest.mark.parametrize("mutate, message", [
    (_delete("name"), "missing keys ['name']"),
    (_delete("categories", "eval_classes"), "missing keys ['eval_classes', 'categories']"),
    (_delete("raw_classes"), "missing keys ['raw_classes']"),
    (_set(["colour"], 1), f"unknown keys ['colour']; known keys: {KNOWN}"),
    (_set(["ignore_index"], 255), "ignore_index must be 0 (evaluation label 0 is 'ignore' throughout ssov)"),
    (_set(["eval_classes", 0], "car"), "eval_classes[0] must be {name: ..., color: [r, g, b]}"),
    (_set(["eval_classes", 1], {"color": [0, 0, 0]}), "eval_classes[1] must be {name: ..., color: [r, g, b]}"),
    (_set(["eval_classes", 1], {"name": "car", "color": [0, 0, 0]}), "duplicate evaluation class 'car'"),
    (_set(["eval_classes", 1, "color"], [0, 0, 256]),
     "eval_classes[1] (road): color must be [r, g, b] with integers 0..255, got [0, 0, 256]"),
    (_set(["eval_classes", 0, "color"], [-1, 0, 0]),
     "eval_classes[0] (car): color must be [r, g, b] with integers 0..255, got [-1, 0, 0]"),
    (_set(["eval_classes", 0, "color"], [1.0, 0, 0]),
     "eval_classes[0] (car): color must be [r, g, b] with integers 0..255, got [1.0, 0, 0]"),
    (_set(["eval_classes", 0, "color"], [0, 0, 0, 0]),
     "eval_classes[0] (car): color must be [r, g, b] with integers 0..255, got [0, 0, 0, 0]"),
    (_set(["eval_classes", 0, "color"], (0, 0, 0)),
     "eval_classes[0] (car): color must be [r, g, b] with integers 0..255, got (0, 0, 0)"),
    (_set(["ignore_color"], [0, 0]), "ignore_color: color must be [r, g, b] with integers 0..255, got [0, 0]"),
    (_set(["raw_classes", "5"], {"name": "x", "eval": 0}), "raw class id '5' must be a non-negative integer"),
    (_set(["raw_classes", -1], {"name": "x", "eval": 0}), "raw class id -1 must be a non-negative integer"),
    (_set(["raw_classes", 5], "x"), "raw_classes[5] must be {name: ..., eval: <eval class or 0>}"),
    (_set(["raw_classes", 5], {"name": "x"}), "raw_classes[5] must be {name: ..., eval: <eval class or 0>}"),
    (_set(["raw_classes", 5], {"eval": 0}), "raw_classes[5] must be {name: ..., eval: <eval class or 0>}"),
    (_set(["raw_classes", 5], {"name": "flat.road", "eval": 0}), "duplicate raw class name 'flat.road'"),
    (_set(["raw_classes", 1, "eval"], "cars"),
     "raw class 1 (vehicle.car) maps to unknown evaluation class 'cars' (did you mean 'car'?)"),
    (_set(["raw_classes", 1, "eval"], "zzz"), "raw class 1 (vehicle.car) maps to unknown evaluation class 'zzz'"),
    (_set(["raw_classes", 1, "eval"], 1), "raw class 1 (vehicle.car) maps to unknown evaluation class 1"),
    (_set(["categories", 0], {"name": "car", "raw": 1}), "categories[0] must be {name, raw, prompts}"),
    (_set(["categories", 1], ["road"]), "categories[1] must be {name, raw, prompts}"),
    (_set(["categories", 1, "name"], "car"), "duplicate category name 'car'"),
    (_set(["categories", 1, "raw"], 3), "category 'road': unknown raw class id 3"),
    (_set(["categories", 1, "raw"], "flat.raod"), "category 'road': unknown raw class 'flat.raod' "
                                                  "(did you mean 'flat.road'?)"),
    (_set(["categories", 1, "raw"], "qqq"), "category 'road': unknown raw class 'qqq'"),
    (_set(["categories", 1, "prompts"], []), "category 'road': prompts must be a non-empty list of non-empty strings"),
    (_set(["categories", 1, "prompts"], "road"),
     "category 'road': prompts must be a non-empty list of non-empty strings"),
    (_set(["categories", 1, "prompts"], ["road", " "]),
     "category 'road': prompts must be a non-empty list of non-empty strings"),
    (_set(["categories", 1, "prompts"], ["road", 7]),
     "category 'road': prompts must be a non-empty list of non-empty strings"),
    (_set(["categories", 2, "prompts"], ["sky", "car"]),
     "duplicate prompts 'car' (ids [0, 4]); list intended duplicates under allowed_duplicate_prompts"),
    (_set(["categories", 2, "prompts"], ["road", "car"]),
     "duplicate prompts 'car' (ids [0, 4]), 'road' (ids [2, 3]); list intended duplicates under "
     "allowed_duplicate_prompts"),
])
def test_every_validation_error_is_one_message_naming_the_file(mutate, message):
    doc = _tiny()
    mutate(doc)
    with pytest.raises(ConfigError) as err:
        parse_dictionary(doc, "bad.yaml")
    assert str(err.value) == f"class dictionary bad.yaml: {message}"


def test_top_level_must_be_a_mapping():
    with pytest.raises(ConfigError) as err:
        parse_dictionary([1, 2], "list.yaml")
    assert str(err.value) == "class dictionary list.yaml: top level must be a mapping"


def test_load_dictionary_by_name_path_and_installed_share(tmp_path, monkeypatch):
    from ssov_train.vocab import dictionary as dictionary_module

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(_tiny()))
    assert load_dictionary(path).source == str(path) and load_dictionary(str(path)).name == "tiny"
    yml = tmp_path / "tiny.yml"
    yml.write_text(yaml.safe_dump(_tiny()))
    assert load_dictionary(yml).name == "tiny"
    (tmp_path / "broken.yaml").write_text("name: [1, 2")
    with pytest.raises(ConfigError, match=f"class dictionary {tmp_path}/broken.yaml: invalid YAML: "):
        load_dictionary(tmp_path / "broken.yaml")
    with pytest.raises(ConfigError) as err:
        load_dictionary(str(tmp_path / "nope.yaml"))
    assert str(err.value).startswith(f"class dictionary {str(tmp_path / 'nope.yaml')!r} not found at "
                                     f"{tmp_path / 'nope.yaml'} (built-in: [")
    # an installed package: share/ssov_ros/config/vocab under sys.prefix or an AMENT_PREFIX_PATH entry
    share = tmp_path / "prefix" / "share" / "ssov_ros" / "config" / "vocab"
    share.mkdir(parents=True)
    (share / "tinyshare.yaml").write_text(yaml.safe_dump({**_tiny(), "name": "tinyshare"}))
    monkeypatch.setenv("AMENT_PREFIX_PATH", f"{tmp_path / 'other'}:{tmp_path / 'prefix'}")
    assert dictionary_module.vocab_dirs()[0] == VOCAB_DIR
    assert dictionary_module.vocab_dirs()[1:] == [
        Path(p) / "share" / "ssov_ros" / "config" / "vocab" for p in (sys.prefix, tmp_path / "other", tmp_path / "prefix")]
    assert load_dictionary("tinyshare").source == str(share / "tinyshare.yaml")
    with pytest.raises(ConfigError) as err:
        load_dictionary("klingon")
    assert str(err.value) == (f"class dictionary 'klingon' not found at {VOCAB_DIR / 'klingon.yaml'} (built-in: "
                              f"['nuscenes', 'semantickitti', 'tinyshare'])")


def test_raw_id_zero_maps_like_any_other_and_the_default_source_is_named():
    doc = _tiny()
    doc["raw_classes"][0]["eval"] = "road"  # a dataset whose raw id 0 is a real class
    d = parse_dictionary(doc)
    assert d.map_raw(np.array([0, 1, 2])).tolist() == [2, 1, 2] and d.source == "<dict>"
    with pytest.raises(ConfigError) as err:
        parse_dictionary([])
    assert str(err.value) == "class dictionary <dict>: top level must be a mapping"


def test_vocab_dirs_without_ament_prefix_path(monkeypatch):
    from ssov_train.vocab import dictionary as dictionary_module

    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    assert dictionary_module.vocab_dirs() == [VOCAB_DIR, Path(sys.prefix) / "share" / "ssov_ros" / "config" / "vocab"]
    monkeypatch.setenv("AMENT_PREFIX_PATH", "")
    assert len(dictionary_module.vocab_dirs()) == 2
