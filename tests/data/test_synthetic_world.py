"""The multi-sensor synthetic world: lidar presets against their datasheets, the intensity and dropout models
against hand-computed values, the varied streets' contents, and reproducibility."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from ssov_train.data.synthetic import generate_world
from ssov_train.data.synthetic import models as m
from ssov_train.data.synthetic.presets import (SENSORS_FILE, load_presets, lidar_preset, parse_presets,
                                               resolve_presets)
from ssov_train.data.synthetic.raycast import SpinningGrid
from ssov_train.data.synthetic.sensors import lidar_grid, scan_lidar
from ssov_train.data.synthetic.world import Actor, Scene, Street, build_scene
from ssov_train.errors import ConfigError

PRESETS = ("nuscenes_hdl32e", "vlp16", "hdl64e", "os1_128")

# ---- datasheet tables, entered by hand ------------------------------------------------------------------------
# HDL-32E user manual, vertical angle table (ring 0 lowest): -30.67 to +10.67 deg, 4/3 deg apart.
HDL32E = [-30.67, -29.33, -28.00, -26.67, -25.33, -24.00, -22.67, -21.33, -20.00, -18.67, -17.33, -16.00, -14.67,
          -13.33, -12.00, -10.67, -9.33, -8.00, -6.67, -5.33, -4.00, -2.67, -1.33, 0.00, 1.33, 2.67, 4.00, 5.33, 6.67,
          8.00, 9.33, 10.67]
# VLP-16 user manual, laser ids 0..15 in firing order (interleaved); the rings are these sorted.
VLP16_BY_LASER_ID = [-15, 1, -13, 3, -11, 5, -9, 7, -7, 9, -5, 11, -3, 13, -1, 15]
# HDL-64E (KITTI): upper block of 32 lasers from +2 deg down every 1/3 deg, lower block of 32 from -8.83 deg down
# every 1/2 deg.
HDL64E_UPPER = [2.0 - k / 3 for k in range(32)]
HDL64E_LOWER = [-8.83 - k / 2 for k in range(32)]
# Ouster OS1-128 datasheet: 45 deg vertical field of view (+22.5 to -22.5), 128 channels, uniform spacing.
OS1_128_SPACING = 45.0 / 127
# Firings per turn (horizontal resolution at 10 Hz): nuScenes keyframe sweeps hold 1,084 per ring; VLP-16 0.2 deg;
# HDL-64E ~0.1728 deg; OS1 2,048 columns.
AZIMUTH_STEPS = {"nuscenes_hdl32e": 1084, "vlp16": 1800, "hdl64e": 2083, "os1_128": 2048}
# Mounting heights: nuScenes' calibration (docs: 1.84 m), KITTI's setup paper (1.73 m), and the roof mounts the
# presets state for the VLP-16 and OS1-128.
HEIGHTS = {"nuscenes_hdl32e": 1.84, "vlp16": 1.9, "hdl64e": 1.73, "os1_128": 1.9}
INTENSITY_DTYPES = {"nuscenes_hdl32e": (np.uint8, 255), "vlp16": (np.uint8, 255), "hdl64e": (np.float32, 1.0),
                    "os1_128": (np.uint16, 65535)}


def datasheet_elevations(name: str) -> np.ndarray:
    if name == "nuscenes_hdl32e":
        return np.array(HDL32E)
    if name == "vlp16":
        return np.sort(VLP16_BY_LASER_ID).astype(float)
    if name == "hdl64e":
        return np.sort(HDL64E_UPPER + HDL64E_LOWER)
    return np.array([-22.5 + k * OS1_128_SPACING for k in range(128)])


@pytest.fixture(scope="module")
def street() -> Scene:
    return build_scene(7, 0, 12, "varied")


@pytest.fixture(scope="module")
def sweeps(street) -> dict:
    """One sweep of the varied street by each preset (the nuScenes one is today's default)."""
    out = {}
    for name in PRESETS:
        preset = lidar_preset(name)
        out[name] = scan_lidar(street, lidar_grid(preset), 3.0, np.random.default_rng(0), preset)
    return out


# ---- presets ---------------------------------------------------------------------------------------------------
def test_presets_file_lists_the_four_sensors_with_nuscenes_as_default():
    sensors = load_presets()
    assert sensors.default == "nuscenes_hdl32e" and tuple(sensors.presets) == PRESETS
    assert resolve_presets(None) == ("nuscenes_hdl32e",) and resolve_presets("all") == PRESETS
    assert resolve_presets("vlp16, hdl64e") == ("vlp16", "hdl64e")


@pytest.mark.parametrize("name", PRESETS)
def test_beam_tables_match_the_datasheets(name, sweeps):
    preset = lidar_preset(name)
    table = datasheet_elevations(name)
    assert preset.beams == len(table) and preset.azimuth_steps == AZIMUTH_STEPS[name]
    np.testing.assert_allclose(preset.elevations, table, atol=0.01)
    # the sweep's points lie on those beams (lidar frame) and on the azimuth grid
    scan = sweeps[name]
    p, ring = scan.points[:, :3].astype(np.float64), scan.points[:, 4].astype(int)
    assert set(np.unique(ring)) == set(range(len(table)))
    elevation = np.degrees(np.arctan2(p[:, 2], np.hypot(p[:, 0], p[:, 1])))
    np.testing.assert_allclose(elevation, table[ring], atol=0.011)
    steps = np.arctan2(p[:, 1], p[:, 0]) / (2 * np.pi / AZIMUTH_STEPS[name])
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-2)
    distance = np.linalg.norm(p, axis=1)
    assert distance.max() <= preset.max_range + 0.1 and distance.min() >= preset.min_range - 0.1


@pytest.mark.parametrize("name", PRESETS)
def test_ground_lies_at_minus_the_mounting_height(name, sweeps):
    scan = sweeps[name]
    p = scan.points[:, :3].astype(np.float64)
    road = (scan.raw_labels == m.DRIVEABLE) & (np.hypot(p[:, 0], p[:, 1]) < 15)
    assert road.sum() > 500
    assert np.median(p[road, 2]) == pytest.approx(-HEIGHTS[name], abs=0.03)
    assert np.abs(p[road, 2] + HEIGHTS[name]).max() < 0.35  # the nuScenes lidar is tilted ~1 deg


@pytest.mark.parametrize("name", PRESETS)
def test_intensity_quantised_to_the_sensor_range(name, sweeps):
    dtype, top = INTENSITY_DTYPES[name]
    scan = sweeps[name]
    assert scan.intensity.dtype == dtype and scan.points.dtype == np.float32
    assert scan.intensity.min() >= 0 and scan.intensity.max() <= top
    np.testing.assert_array_equal(scan.points[:, 3], scan.intensity.astype(np.float32))
    if dtype != np.float32:
        assert np.unique(scan.intensity).size > 20  # used, not stuck at a level
    else:
        assert np.unique(scan.intensity).size > 1000  # 0..1 floats, not rounded to levels
    assert scan.intensity.max() > 0.5 * top if name != "os1_128" else scan.intensity.max() > 1000


def test_quantise_clips_rounds_and_casts():
    values = np.array([-3.0, 0.2, 0.5, 0.7, 1.5, 254.6, 300.0, 70000.0])
    intensity = lidar_preset("hdl64e").intensity
    for output, expected in (("unit", [0, 0.2, 0.5, 0.7, 1, 1, 1, 1]),
                             ("uint8", [0, 0, 0, 1, 2, 255, 255, 255]),  # round half to even: 0.5 -> 0
                             ("uint16", [0, 0, 0, 1, 2, 255, 300, 65535])):
        q = dataclasses.replace(intensity, output=output).quantise(values)
        assert q.dtype == {"unit": np.float32, "uint8": np.uint8, "uint16": np.uint16}[output]
        np.testing.assert_allclose(q, expected, atol=1e-7)


# ---- a hand-built test world --------------------------------------------------------------------------------
def flat_scene(actors: list[Actor]) -> Scene:
    """Road everywhere (asphalt, no markings), the ego standing still at the origin facing +x."""
    street = Street(-1e4, 1e4, -1e4, 1e4, [])
    if not actors:  # a scene needs one actor: a pebble far out of range
        actors = [Actor(m.make_body(([m.box(0, 0, 0.05, 0.1, 0.1, 0.1, m.Material.CONCRETE, (0.5,) * 3)],
                                     np.array([0.1, 0.1, 0.1])), m.MANMADE), np.array([0.1, 0.1, 0.1]),
                        np.array([-5000.0, 0.0, 0.05]), 0.0)]
    return Scene(0, "test", "", street, actors, 1e4, np.array([0.0, 0.0]), 0.0, (0.0, 1.0, 0.0),
                 np.array([0.0, 0.0, 1.0]), np.eye(4))


def test_preset(**changes) -> object:
    """A preset built from data like config/sensors.yaml's, with ``changes`` merged in (nested by key)."""
    body = {"description": "test", "elevations_deg": [-10.0, 0.0, 10.0], "azimuth_steps": 360, "max_range": 100.0,
            "min_range": 0.0, "range_noise": 0.0,
            "mount": {"translation": [0.0, 0.0, 1.5], "rotation": [1.0, 0.0, 0.0, 0.0]},
            "intensity": {"reflectivity": "nir_905nm", "gain": 1000.0, "incidence_floor": 0.2, "range_exponent": 2.0,
                          "reference_range": 10.0, "speckle_sigma": 0.0, "output": "uint16"},
            "dropout": {"near": 0.0, "far": 0.0}}
    for key, value in changes.items():
        body[key] = {**body[key], **value} if isinstance(value, dict) else value
    return parse_presets({"default": "t", "presets": {"t": body}}, "test").presets["t"]


test_preset.__test__ = False  # a helper, not a test


def test_intensity_model_against_hand_computed_values():
    """A facade 25 m ahead, facing the sensor: intensity = gain x reflectivity x (floor + (1 - floor) cos) x
    (10 m / range)^2, uint16."""
    assert m.NIR_REFLECTIVITY[m.Material.FACADE] == 0.35
    wall = m.make_body(([m.box(0, 0, 5.0, 1.0, 120.0, 10.0, m.Material.FACADE, (0.6,) * 3)],
                        np.array([1.0, 120.0, 10.0])), m.MANMADE)
    scene = flat_scene([Actor(wall, np.array([1.0, 120.0, 10.0]), np.array([25.5, 0.0, 5.0]), 0.0)])
    preset = test_preset()
    scan = scan_lidar(scene, lidar_grid(preset), 0.0, np.random.default_rng(0), preset)
    p, ring = scan.points[:, :3].astype(np.float64), scan.points[:, 4].astype(int)
    level = ring == 1  # the horizontal beam, at the sensor's height 1.5 m: every azimuth within 60 deg hits the wall
    azimuth = np.degrees(np.arctan2(p[:, 1], p[:, 0]))
    straight = level & (np.abs(azimuth) < 0.5)
    oblique = level & (np.abs(azimuth - 60.0) < 0.5)
    # straight ahead: range 25 m, normal incidence: 1000 x 0.35 x 1 x (10 / 25)^2 = 56
    assert np.linalg.norm(p[straight], axis=1) == pytest.approx([25.0], abs=1e-4)
    assert scan.intensity[straight].tolist() == [56]
    # 60 deg to the left: range 25 / cos 60 = 50 m, cos(incidence) = 0.5: 350 x (0.2 + 0.8 x 0.5) x 0.04 = 8.4 -> 8
    assert np.linalg.norm(p[oblique], axis=1) == pytest.approx([50.0], abs=1e-4)
    assert scan.intensity[oblique].tolist() == [8]
    # every wall point: the same law from its own geometry
    on_wall = level & (scan.raw_labels == m.MANMADE)
    r = np.linalg.norm(p[on_wall], axis=1)
    cos = p[on_wall, 0] / r
    expected = np.round(1000 * 0.35 * (0.2 + 0.8 * cos) * (10 / r) ** 2)
    assert on_wall.sum() > 100
    np.testing.assert_array_equal(scan.intensity[on_wall], expected)
    # range compensated (exponent 0) on a 0..255 scale: 100 x 0.35 x (0.2 + 0.8 x 0.5) = 21 at 60 deg
    calibrated = test_preset(intensity={"gain": 100.0, "range_exponent": 0.0, "output": "uint8"})
    scan = scan_lidar(scene, lidar_grid(calibrated), 0.0, np.random.default_rng(0), calibrated)
    q = scan.points[:, :3].astype(np.float64)
    at60 = (scan.points[:, 4] == 1) & (np.abs(np.degrees(np.arctan2(q[:, 1], q[:, 0])) - 60.0) < 0.5)
    assert scan.intensity[at60].tolist() == [21] and scan.intensity.dtype == np.uint8


# ---- dropouts ----------------------------------------------------------------------------------------------------
GROUND_ELEVATIONS = [-10.0, -5.0, -3.0, -2.0]  # from 2.5 m: the ground at 14.4, 28.7, 47.8 and 71.6 m


def ground_rings(preset) -> tuple[np.ndarray, np.ndarray]:
    """(kept points per ring, slant range of each ring) of one sweep over the flat road."""
    scan = scan_lidar(flat_scene([]), lidar_grid(preset), 0.0, np.random.default_rng(1), preset)
    kept = np.bincount(scan.points[:, 4].astype(int), minlength=preset.beams)
    return kept, 2.5 / np.sin(np.radians(-np.array(GROUND_ELEVATIONS)))


def test_random_dropouts_rise_with_range_at_the_configured_rate():
    steps = 4000
    base = dict(elevations_deg=GROUND_ELEVATIONS, azimuth_steps=steps, mount={"translation": [0.0, 0.0, 2.5]})
    kept, r = ground_rings(test_preset(**base))
    assert kept.tolist() == [steps] * 4  # no dropout configured: every ray returns
    kept, r = ground_rings(test_preset(**base, dropout={"near": 0.05, "far": 0.45}))
    p = 0.05 + 0.4 * r / 100.0  # linear from `near` at 0 m to `far` at max_range (100 m)
    expected = steps * (1 - p)
    assert (np.abs(kept - expected) < 5 * np.sqrt(steps * p * (1 - p))).all(), (kept, expected)
    assert kept[0] > kept[-1] + 500


def test_weak_echoes_drop_as_the_detection_range_law_says():
    """Asphalt (0.15 at 905 nm) seen at grazing incidence: detected when 0.15 (0.2 + 0.8 cos) speckle
    (100 m / r)^2 >= 0.8, speckle ~ lognormal(0, 0.5): P = P(ln speckle >= ln x) = erfc(ln x / (0.5 sqrt 2)) / 2."""
    steps = 4000
    preset = test_preset(elevations_deg=GROUND_ELEVATIONS, azimuth_steps=steps, mount={"translation": [0.0, 0.0, 2.5]},
                         intensity={"speckle_sigma": 0.5},
                         dropout={"detection": {"reflectivity": 0.8, "range_at_reference": 100.0}})
    assert m.NIR_REFLECTIVITY[m.Material.ASPHALT] == 0.15
    kept, r = ground_rings(preset)
    cos = np.sin(np.radians(-np.array(GROUND_ELEVATIONS)))  # the ground's normal is vertical
    x = 0.8 / (0.15 * (0.2 + 0.8 * cos) * (100.0 / r) ** 2)
    p_detect = np.array([0.5 * math.erfc(math.log(v) / (0.5 * math.sqrt(2))) for v in x])
    assert p_detect[0] > 0.9 and p_detect[-1] < 0.1  # the law spans the rings
    assert (np.abs(kept - steps * p_detect) < 5 * np.sqrt(steps * p_detect * (1 - p_detect)) + 1).all(), \
        (kept, steps * p_detect)


def test_returns_closer_than_the_minimum_range_are_dropped():
    preset = test_preset(elevations_deg=[-60.0], mount={"translation": [-3.0, 0.0, 2.5]}, min_range=3.0)
    kept, _ = ground_rings(preset)  # the ground at 2.5 / sin 60 = 2.9 m: under the minimum range
    assert kept.tolist() == [0]
    kept, _ = ground_rings(dataclasses.replace(preset, min_range=2.8))
    assert kept.tolist() == [360]


# ---- the varied street -------------------------------------------------------------------------------------------
LISTED_THINGS = {"car": {m.CAR}, "truck": {m.TRUCK}, "bus": {m.RIGID_BUS, m.BENDY_BUS}, "trailer": {m.TRAILER},
                 "construction_vehicle": {m.CONSTRUCTION}, "motorcycle": {m.MOTORCYCLE}, "bicycle": {m.BICYCLE},
                 "pedestrian": {m.ADULT, m.CHILD, m.WORKER, m.OFFICER}, "barrier": {m.BARRIER},
                 "traffic_cone": {m.CONE}}
# Typical dimensions (length, width, height) in metres, bounds from published figures: EU limits (width 2.55 m,
# 2.6 m refrigerated; rigid vehicles 12 m, 3-axle buses 13.5 m, articulated buses 18.75 m, semi-trailers 13.6 m),
# passenger cars and vans (3.5-6.5 m long), people 0.9-2.0 m tall, traffic cones 0.3-1.0 m (EN 13422), jersey and
# plastic barriers (~2 m long, 0.8-1.0 m high), bicycles ~1.7 m, motorcycles ~2.1 m long.
SIZE_BOUNDS = {
    m.CAR: ((3.4, 6.5), (1.5, 2.2), (1.3, 2.8)), m.POLICE: ((3.4, 6.5), (1.5, 2.2), (1.3, 2.9)),
    m.AMBULANCE: ((4.5, 7.0), (1.8, 2.3), (2.0, 3.0)), m.TRUCK: ((4.5, 12.0), (1.8, 2.6), (1.6, 4.0)),
    m.RIGID_BUS: ((9.0, 13.5), (2.4, 2.6), (2.8, 4.0)), m.BENDY_BUS: ((16.0, 18.75), (2.4, 2.6), (2.8, 4.0)),
    m.TRAILER: ((5.0, 13.6), (2.3, 2.6), (2.5, 4.1)), m.CONSTRUCTION: ((5.0, 10.0), (2.3, 3.2), (2.8, 4.5)),
    m.MOTORCYCLE: ((1.8, 2.5), (0.6, 1.0), (1.0, 2.0)), m.BICYCLE: ((1.5, 1.9), (0.5, 0.8), (0.9, 2.0)),
    m.ADULT: ((0.2, 0.8), (0.4, 0.8), (1.5, 2.0)), m.WORKER: ((0.2, 0.8), (0.4, 0.8), (1.5, 2.0)),
    m.OFFICER: ((0.2, 0.8), (0.4, 0.8), (1.5, 2.0)), m.CHILD: ((0.15, 0.6), (0.25, 0.6), (0.9, 1.45)),
    m.CONE: ((0.25, 0.5), (0.25, 0.5), (0.3, 1.0)), m.BARRIER: ((1.0, 2.6), (0.3, 0.7), (0.7, 1.2)),
}
SEEDS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def varied_streets() -> list[Scene]:
    return [build_scene(seed, 0, 12, "varied") for seed in SEEDS]


def test_every_listed_class_is_on_every_varied_street(varied_streets, sweeps):
    for scene in varied_streets:
        classes = {a.body.raw_class for a in scene.actors}
        missing = [name for name, raw in LISTED_THINGS.items() if not raw & classes]
        assert not missing, (scene.name, missing)
        assert {m.SIDEWALK, m.MANMADE, m.VEGETATION} <= classes
        moving = {a.body.raw_class for a in scene.actors if a.velocity > 0}
        parked = {a.body.raw_class for a in scene.actors if a.attribute == "vehicle.parked"}
        assert m.CAR in moving and m.CAR in parked and moving & {m.ADULT, m.CHILD, m.OFFICER}
        ground, _, _ = scene.street.ground(np.array([[scene.length / 2, 0.0], [scene.length / 2, 200.0]]))
        assert ground.tolist() == [m.DRIVEABLE, m.TERRAIN]
    # and a lidar sees them: one 128-beam sweep mid-street holds the ground classes and most listed objects
    labels = set(np.unique(sweeps["os1_128"].raw_labels).tolist())
    assert {m.DRIVEABLE, m.SIDEWALK, m.TERRAIN, m.MANMADE, m.VEGETATION} <= labels
    assert sum(bool(raw & labels) for raw in LISTED_THINGS.values()) >= 8, labels


def test_varied_streets_vary(varied_streets):
    """Across streets: lane widths, lanes, curb heights, verges, building heights and setbacks differ."""
    scenes = varied_streets + [build_scene(seed, 0, 12, "varied") for seed in (4, 5, 6, 7)]
    road_widths = [s.street.road_left - s.street.road_right for s in scenes]
    curbs = [max(a.size[2] for a in s.actors if a.body.raw_class == m.SIDEWALK) for s in scenes]
    assert max(road_widths) - min(road_widths) > 5.0 and max(curbs) - min(curbs) > 0.05
    assert any(any(a.body.raw_class == m.TERRAIN for a in s.actors) for s in scenes)  # verges, grass medians, mounds
    heights = [a.size[2] for s in scenes for a in s.actors if a.body.raw_class == m.MANMADE and a.size[0] > 8]
    assert min(heights) < 7 and max(heights) > 25
    for s in scenes:  # poles and fences: lamps, sign posts, bollards, utility poles are thin and tall, fences long
        thin = [a for a in s.actors if a.body.raw_class == m.MANMADE and a.size[0] < 0.4 and a.size[2] > 0.7]
        assert len(thin) > 10


def test_objects_have_realistic_sizes(varied_streets):
    checked = set()
    for scene in varied_streets:
        for actor in scene.actors:
            bounds = SIZE_BOUNDS.get(actor.body.raw_class)
            if bounds is None:
                continue
            checked.add(actor.body.raw_class)
            for value, (lo, hi), what in zip(actor.size, bounds, ("length", "width", "height")):
                assert lo <= value <= hi, (actor.body.raw_class, what, value)
    assert checked >= {m.CAR, m.TRUCK, m.RIGID_BUS, m.TRAILER, m.CONSTRUCTION, m.MOTORCYCLE, m.BICYCLE, m.ADULT,
                       m.CONE, m.BARRIER}


def test_classic_streets_stay_classic():
    """The default style has none of the varied street's additions (the shipped model's world)."""
    scene = build_scene(0, 0, 12)
    assert not any(a.body.raw_class == m.TERRAIN for a in scene.actors)
    assert {round(a.size[2], 6) for a in scene.actors if a.body.raw_class == m.SIDEWALK} == {0.15}
    with pytest.raises(ConfigError, match="street style 'busy'"):
        build_scene(0, 0, 12, "busy")


# ---- reproducibility ---------------------------------------------------------------------------------------------
def actor_table(scene: Scene) -> list:
    return [(a.body.raw_class, a.body.instance, *a.size.round(9), *a.centre.round(9), round(a.yaw, 9), a.velocity)
            for a in scene.actors]


def test_same_seed_same_street_and_sweep(street):
    again = build_scene(7, 0, 12, "varied")
    assert actor_table(again) == actor_table(street)
    assert actor_table(build_scene(8, 0, 12, "varied")) != actor_table(street)
    preset = lidar_preset("os1_128")  # dropouts and speckle: all from the generator passed in
    a, b = (scan_lidar(again, lidar_grid(preset), 1.0, np.random.default_rng(3), preset) for _ in range(2))
    assert a.points.tobytes() == b.points.tobytes() and a.raw_labels.tobytes() == b.raw_labels.tobytes()


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_multi_sensor_world_is_reproducible_and_records_its_presets(tmp_path):
    spec = dict(name="multi", num_scenes=4, frames_per_scene=1, image_width=32, image_height=18, seed=5,
                lidar="vlp16,hdl64e", street="varied")
    one = generate_world(tmp_path / "one", workers=1, **spec)
    two = generate_world(tmp_path / "two", workers=2, **spec)
    assert files(one) == files(two)
    record = json.loads((one / "v1.0-multi" / "lidar_presets.json").read_text())
    assert record["street"] == "varied"
    assert record["scenes"] == {"scene-0000": "vlp16", "scene-0001": "hdl64e", "scene-0002": "vlp16",
                                "scene-0003": "hdl64e"}
    assert len(record["presets"]["hdl64e"]["elevations_deg"]) == 64
    calibrations = json.loads((one / "v1.0-multi" / "calibrated_sensor.json").read_text())
    lidar_heights = sorted(c["translation"][2] for c in calibrations if not c["camera_intrinsic"])
    assert lidar_heights == [1.73, 1.73, 1.9, 1.9]
    sweeps = sorted((one / "samples" / "LIDAR_TOP").iterdir())
    sizes = sorted(len(np.fromfile(s, np.float32).reshape(-1, 5)) for s in sweeps)
    assert sizes[0] < 16 * 1800 and sizes[-1] > 60_000  # the 16-beam scenes and the 64-beam one
    # validation holds a scene of each preset (a fifth of 4 scenes would be one)
    assert json.loads((one / "v1.0-multi" / "splits.json").read_text())["val"] == ["scene-0002", "scene-0003"]


# ---- bad presets -------------------------------------------------------------------------------------------------
def good_file() -> dict:
    return yaml.safe_load(SENSORS_FILE.read_text())


@pytest.mark.parametrize("change, message", [
    (lambda d: d["presets"]["vlp16"].update(elevations_deg=[1.0, -1.0]),
     "presets.vlp16: elevations_deg must list the beams from the lowest up, strictly increasing"),
    (lambda d: d["presets"]["vlp16"].update(beams=16), "presets.vlp16.beams: unknown key"),
    (lambda d: d["presets"]["os1_128"]["evenly_spaced"].pop("count"), "presets.os1_128.evenly_spaced.count: required"),
    (lambda d: d["presets"]["os1_128"].update(elevations_deg=[0.0]), "presets.os1_128: give the beams either as"),
    (lambda d: d["presets"]["hdl64e"]["intensity"].update(output="int8"),
     r"presets.hdl64e.intensity.output: 'int8' is not one of \['unit', 'uint8', 'uint16'\]"),
    (lambda d: d["presets"]["os1_128"]["mount"].update(rotation=[1.0, 0.1, 0.0, 0.0]),
     r"presets.os1_128.mount: rotation \[1.0, 0.1, 0.0, 0.0\] is not a unit quaternion"),
    (lambda d: d["presets"]["os1_128"]["dropout"].update(far=1.5),
     r"presets.os1_128.dropout: near and far are probabilities in \[0, 1\], got 0.005, 1.5"),
    (lambda d: d["presets"]["vlp16"].pop("max_range"), "presets.vlp16.max_range: required key missing"),
    (lambda d: d.update(default="vls128"), "default 'vls128' is not a preset"),
    (lambda d: d["presets"].update(all=d["presets"]["vlp16"]), "'all' and names with ',' are reserved"),
])
def test_bad_presets_are_config_errors_naming_the_key(change, message):
    data = good_file()
    change(data)
    with pytest.raises(ConfigError, match=message):
        parse_presets(data, "sensors.yaml")


def test_unknown_preset_names_are_config_errors():
    with pytest.raises(ConfigError, match="unknown lidar preset 'vls128'"):
        resolve_presets("vlp16,vls128")
    with pytest.raises(ConfigError, match="listed twice"):
        resolve_presets("vlp16,vlp16")


def test_grid_of_a_preset_is_its_beams_and_steps():
    preset = lidar_preset("vlp16")
    grid = lidar_grid(preset)
    assert isinstance(grid, SpinningGrid) and (grid.rings, grid.steps) == (16, 1800)
    np.testing.assert_allclose(np.degrees(grid.elevations), datasheet_elevations("vlp16"))


def test_validation_split_holds_every_preset_when_there_are_enough_scenes():
    from ssov_train.data.synthetic.writer import default_splits

    assert default_splits(10, 4)["val"] == ["scene-0006", "scene-0007", "scene-0008", "scene-0009"]  # i mod 4: all
    assert default_splits(20, 4)["val"] == ["scene-0016", "scene-0017", "scene-0018", "scene-0019"]
    assert default_splits(5, 4)["val"] == ["scene-0004"]  # fewer than two scenes per preset: a fifth, as before
    assert default_splits(10, 1) == default_splits(10)


@pytest.mark.parametrize("bad, message", [({"lidar": "vls128"}, "unknown lidar preset 'vls128'"),
                                          ({"street": "busy"}, "street style 'busy'")])
def test_bad_world_settings_write_nothing(tmp_path, bad, message):
    with pytest.raises(ConfigError, match=message):
        generate_world(tmp_path / "w", num_scenes=1, frames_per_scene=1, **bad)
    assert not (tmp_path / "w").exists()
