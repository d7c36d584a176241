"""The class dictionaries are data; these tests pin the facts of method.md §2 and the validation."""

import copy

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
