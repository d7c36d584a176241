"""Procedural object models built from boxes, cylinders and ellipsoids, and the materials they are made of.

A model is a list of parts in a frame with its origin on the ground under the centre of the object's
annotation box (x forward, y left, z up) plus that box's size (length, width, height); :func:`make_body`
turns it into a :class:`Body` centred on the box.  Proportions follow the real classes closely enough for
lidar and cameras to tell them apart the way they do in nuScenes (a bus is long and tall, a bicycle thin).
"""

from __future__ import annotations

from dataclasses import replace
from enum import IntEnum

import numpy as np

from .raycast import BOX, CYLINDER, ELLIPSOID, Body, Part


class Material(IntEnum):
    SKY = 0
    ASPHALT = 1
    MARKING = 2
    CONCRETE = 3
    GRASS = 4
    FOLIAGE = 5
    BARK = 6
    FACADE = 7
    PAINT = 8
    GLASS = 9
    RUBBER = 10
    METAL = 11
    CLOTH = 12
    SKIN = 13
    REFLECTIVE = 14
    SIGN = 15
    PLASTIC = 16
    FUR = 17


# Lidar reflectivity (share of the 255 intensity scale at normal incidence): asphalt ~12 like nuScenes' median
# return, glass and tyres weak, lane paint, hi-vis and signs (retro-reflective) strong.
_REFLECTIVITY = {Material.SKY: 0.0, Material.ASPHALT: 0.05, Material.MARKING: 0.35, Material.CONCRETE: 0.09,
                 Material.GRASS: 0.07, Material.FOLIAGE: 0.08, Material.BARK: 0.06, Material.FACADE: 0.12,
                 Material.PAINT: 0.16, Material.GLASS: 0.03, Material.RUBBER: 0.02, Material.METAL: 0.22,
                 Material.CLOTH: 0.10, Material.SKIN: 0.06, Material.REFLECTIVE: 0.85, Material.SIGN: 1.0,
                 Material.PLASTIC: 0.12, Material.FUR: 0.07}
REFLECTIVITY = np.array([_REFLECTIVITY[m] for m in Material])  # indexed by material id

# Diffuse reflectivity at 905 nm (the lasers' near infrared), for the presets that model the echo physically:
# vegetation is bright in the NIR, asphalt dark, tyres and glass (mostly specular or transmitting) darker still;
# retro-reflectors (hi-vis, signs, lane paint's glass beads) send back more than any diffuse white (> 1).
_NIR_REFLECTIVITY = {Material.SKY: 0.0, Material.ASPHALT: 0.15, Material.MARKING: 0.6, Material.CONCRETE: 0.3,
                     Material.GRASS: 0.45, Material.FOLIAGE: 0.5, Material.BARK: 0.3, Material.FACADE: 0.35,
                     Material.PAINT: 0.3, Material.GLASS: 0.05, Material.RUBBER: 0.03, Material.METAL: 0.4,
                     Material.CLOTH: 0.35, Material.SKIN: 0.45, Material.REFLECTIVE: 1.5, Material.SIGN: 3.0,
                     Material.PLASTIC: 0.3, Material.FUR: 0.3}
NIR_REFLECTIVITY = np.array([_NIR_REFLECTIVITY[m] for m in Material])

# Raw nuScenes-lidarseg class ids (config/vocab/nuscenes.yaml raw_classes).
ADULT, CHILD, WORKER, OFFICER, STROLLER, ANIMAL = 2, 3, 4, 6, 7, 1
BARRIER, PUSHABLE, CONE, BICYCLE_RACK = 9, 11, 12, 13
BICYCLE, BENDY_BUS, RIGID_BUS, CAR, CONSTRUCTION, AMBULANCE, POLICE, MOTORCYCLE, TRAILER, TRUCK = \
    14, 15, 16, 17, 18, 19, 20, 21, 22, 23
DRIVEABLE, OTHER_FLAT, SIDEWALK, TERRAIN, MANMADE, STATIC_OTHER, VEGETATION, EGO = 24, 25, 26, 27, 28, 29, 30, 31

Model = tuple[list[Part], np.ndarray]

_WHEEL_AXIS_Y = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])  # part z -> body y
CAR_PAINT = np.array([[0.92, 0.92, 0.9], [0.08, 0.08, 0.09], [0.62, 0.63, 0.65], [0.35, 0.36, 0.38],
                      [0.6, 0.08, 0.07], [0.12, 0.22, 0.5], [0.07, 0.12, 0.25], [0.15, 0.3, 0.18],
                      [0.72, 0.66, 0.52]])
CLOTHES = np.array([[0.1, 0.1, 0.12], [0.2, 0.25, 0.4], [0.5, 0.1, 0.1], [0.75, 0.72, 0.65], [0.3, 0.3, 0.3],
                    [0.15, 0.35, 0.2], [0.85, 0.85, 0.85], [0.45, 0.3, 0.2]])
FACADES = np.array([[0.75, 0.7, 0.62], [0.62, 0.38, 0.3], [0.85, 0.84, 0.8], [0.5, 0.52, 0.55],
                    [0.7, 0.6, 0.45], [0.4, 0.42, 0.46], [0.9, 0.82, 0.7]])
GLASS_TINT = (0.12, 0.15, 0.2)
TIRE = (0.05, 0.05, 0.05)
HIVIS = (0.95, 0.6, 0.05)
SKIN_TONES = np.array([[0.87, 0.7, 0.58], [0.6, 0.42, 0.3], [0.35, 0.24, 0.17], [0.95, 0.8, 0.68]])


def box(x, y, z, length, width, height, material, color, pitch: float = 0.0) -> Part:
    """A box centred at (x, y, z), optionally pitched about its y axis (nose up for positive pitch)."""
    rot = None
    if pitch:
        c, s = np.cos(pitch), np.sin(pitch)
        rot = np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])
    return Part(BOX, np.array([length, width, height]) / 2, np.array([x, y, z], float), int(material),
                np.asarray(color, np.float32), rot)


def cylinder(x, y, z, radius, length, material, color, axis: str = "z") -> Part:
    """A cylinder centred at (x, y, z) along the body's z (upright) or y (a wheel) axis."""
    return Part(CYLINDER, np.array([radius, radius, length / 2]), np.array([x, y, z], float), int(material),
                np.asarray(color, np.float32), _WHEEL_AXIS_Y if axis == "y" else None)


def ellipsoid(x, y, z, rx, ry, rz, material, color) -> Part:
    return Part(ELLIPSOID, np.array([rx, ry, rz], float), np.array([x, y, z], float), int(material),
                np.asarray(color, np.float32))


def make_body(model: Model, raw_class: int, instance: int = 0) -> Body:
    """Move a ground-origin model to its box centre."""
    parts, size = model
    return Body([replace(p, offset=p.offset - (0, 0, size[2] / 2)) for p in parts], raw_class, instance)


def _wheels(xs, width, radius, tire_width=0.22) -> list[Part]:
    y = width / 2 - tire_width / 2
    return [cylinder(x, s * y, radius, radius, tire_width, Material.RUBBER, TIRE, axis="y")
            for x in xs for s in (-1, 1)]


def _pick(rng: np.random.Generator, palette: np.ndarray) -> np.ndarray:
    return np.clip(palette[rng.integers(len(palette))] * rng.uniform(0.9, 1.1), 0, 1)


def car(rng: np.random.Generator, paint=None) -> Model:
    length, width, height = rng.uniform(3.9, 4.9), rng.uniform(1.72, 1.95), rng.uniform(1.42, 1.75)
    paint = _pick(rng, CAR_PAINT) if paint is None else paint
    body_top = 0.58 * height
    cabin_len = length * rng.uniform(0.48, 0.58)
    cabin_top = height - 0.05  # the painted roof sits on the windows, not flush with them
    parts = [box(0, 0, (0.3 + body_top) / 2, length, width, body_top - 0.3, Material.PAINT, paint),
             box(-0.08 * length, 0, (body_top + cabin_top) / 2, cabin_len, width * 0.9, cabin_top - body_top,
                 Material.GLASS, GLASS_TINT),
             box(-0.08 * length, 0, height - 0.04, cabin_len * 0.9, width * 0.86, 0.08, Material.PAINT, paint)]
    parts += _wheels((length / 2 - 0.8, -length / 2 + 0.8), width, 0.33)
    return parts, np.array([length, width, height])


def police_car(rng: np.random.Generator) -> Model:
    parts, size = car(rng, paint=np.array([0.95, 0.95, 0.95]))
    parts.append(box(-0.1 * size[0], 0, size[2] + 0.06, 0.35, 1.1, 0.12, Material.REFLECTIVE, (0.1, 0.2, 0.9)))
    return parts, size + (0, 0, 0.12)


def van(rng: np.random.Generator, paint=None) -> Model:
    """Box-bodied van (ambulances share it)."""
    length, width, height = rng.uniform(5.0, 6.2), rng.uniform(1.95, 2.1), rng.uniform(2.2, 2.7)
    paint = _pick(rng, CAR_PAINT) if paint is None else paint
    parts = [box(-0.4, 0, (0.35 + height) / 2, length - 0.8, width, height - 0.35, Material.PAINT, paint),
             box(length / 2 - 0.4, 0, 0.35 + 0.45, 0.8, width * 0.95, 0.9, Material.PAINT, paint),
             box(length / 2 - 0.6, 0, 0.35 + 0.9 + 0.45, 0.4, width * 0.9, 0.9, Material.GLASS, GLASS_TINT)]
    parts += _wheels((length / 2 - 0.9, -length / 2 + 0.9), width, 0.36)
    return parts, np.array([length, width, height])


def ambulance(rng: np.random.Generator) -> Model:
    parts, size = van(rng, paint=np.array([0.95, 0.93, 0.85]))
    parts.append(box(size[0] / 2 - 1.2, 0, size[2] + 0.06, 0.3, 1.2, 0.12, Material.REFLECTIVE, (0.9, 0.1, 0.1)))
    return parts, size + (0, 0, 0.12)


def truck(rng: np.random.Generator) -> Model:
    """A box truck or a pickup (both vehicle.truck in nuScenes)."""
    paint = _pick(rng, CAR_PAINT)
    if rng.random() < 0.35:
        length, width, height = rng.uniform(5.2, 5.9), rng.uniform(1.9, 2.05), rng.uniform(1.8, 2.0)
        parts = [box(0, 0, 0.7, length, width, 0.7, Material.PAINT, paint),
                 box(0.15 * length, 0, (1.05 + height) / 2, 0.4 * length, width * 0.95, height - 1.05,
                     Material.GLASS, GLASS_TINT),
                 box(-0.3 * length, 0, 1.25, 0.4 * length, width, 0.4, Material.PAINT, paint)]
        parts += _wheels((length / 2 - 1.0, -length / 2 + 1.1), width, 0.4)
        return parts, np.array([length, width, height])
    length, width, height = rng.uniform(6.5, 10.0), rng.uniform(2.3, 2.55), rng.uniform(3.2, 3.8)
    cab = 2.2
    cargo = np.clip(_pick(rng, FACADES) * 1.1, 0, 1)
    parts = [box(length / 2 - cab / 2, 0, 0.5 + 1.0, cab, width, 2.0, Material.PAINT, paint),
             box(length / 2 - cab / 2 + 0.1, 0, 2.5 + 0.35, cab - 0.4, width * 0.95, 0.7, Material.GLASS, GLASS_TINT),
             box(-cab / 2, 0, (0.9 + height) / 2, length - cab - 0.2, width, height - 0.9, Material.PAINT, cargo)]
    parts += _wheels((length / 2 - 1.2, -length / 2 + 1.3, -length / 2 + 2.6), width, 0.5, 0.3)
    return parts, np.array([length, width, height])


def bus(rng: np.random.Generator, bendy: bool = False) -> Model:
    length = rng.uniform(16.5, 18.5) if bendy else rng.uniform(10.5, 12.8)
    width, height = 2.55, rng.uniform(3.0, 3.4)
    paint = _pick(rng, np.array([[0.85, 0.15, 0.1], [0.95, 0.8, 0.1], [0.9, 0.9, 0.9], [0.1, 0.35, 0.7]]))
    sections = [(-length / 4 - 0.3, length / 2 - 0.6), (length / 4 + 0.3, length / 2 - 0.6)] if bendy \
        else [(0.0, length)]
    parts = []
    for x, seg in sections:
        parts += [box(x, 0, (0.35 + height) / 2, seg, width - 0.04, height - 0.35, Material.PAINT, paint),
                  box(x, 0, 1.2 + (height - 1.6) / 2 + 0.2, seg * 0.96, width, height - 1.6,
                      Material.GLASS, GLASS_TINT)]
    if bendy:
        parts.append(box(0, 0, height / 2 + 0.2, 1.2, width * 0.9, height - 0.6, Material.RUBBER, TIRE))
    parts += _wheels((length / 2 - 2.6, -length / 2 + 3.0) + ((0.5,) if bendy else ()), width, 0.5, 0.3)
    return parts, np.array([length, width, height])


def trailer(rng: np.random.Generator) -> Model:
    length, width, height = rng.uniform(6.0, 12.5), 2.5, rng.uniform(3.2, 4.0)
    color = np.clip(_pick(rng, FACADES) * 1.15, 0, 1)
    parts = [box(0, 0, (1.1 + height) / 2, length, width, height - 1.1, Material.PAINT, color),
             box(length / 2 - 1.5, 0, 0.55, 0.2, width * 0.8, 1.1, Material.METAL, (0.3, 0.3, 0.3))]
    parts += _wheels((-length / 2 + 1.2, -length / 2 + 2.4), width, 0.5, 0.3)
    return parts, np.array([length, width, height])


def excavator(rng: np.random.Generator) -> Model:
    """Tracked excavator with a raised boom (vehicle.construction)."""
    yellow = np.array([0.95, 0.7, 0.05]) * rng.uniform(0.85, 1.0)
    length, width, height = rng.uniform(8.0, 9.5), 3.0, 4.1
    parts = [box(-1.0, 1.1, 0.45, 4.2, 0.8, 0.9, Material.RUBBER, TIRE),
             box(-1.0, -1.1, 0.45, 4.2, 0.8, 0.9, Material.RUBBER, TIRE),
             box(-1.2, 0, 1.55, 3.6, 2.8, 1.3, Material.PAINT, yellow),
             box(-0.1, 0.6, 2.9, 1.2, 1.0, 1.4, Material.GLASS, GLASS_TINT),
             box(1.3, -0.3, 2.9, 3.4, 0.5, 0.5, Material.PAINT, yellow, pitch=0.55),
             box(length / 2 - 1.0, -0.3, 2.3, 0.5, 0.5, 2.8, Material.PAINT, yellow),
             box(length / 2 - 0.6, -0.3, 0.8, 1.0, 1.0, 0.9, Material.METAL, (0.25, 0.25, 0.25))]
    return parts, np.array([length, width, height])


def two_wheeler(rng: np.random.Generator, motor: bool, rider: bool) -> Model:
    """A bicycle or motorcycle, optionally ridden (the rider is part of the vehicle, as in nuScenes)."""
    length = rng.uniform(1.9, 2.3) if motor else rng.uniform(1.6, 1.8)
    radius = 0.32 if motor else 0.34
    color = _pick(rng, CAR_PAINT)
    wheels = [cylinder(x, 0, radius, radius, 0.12 if motor else 0.04, Material.RUBBER, TIRE, axis="y")
              for x in (length / 2 - radius, -length / 2 + radius)]
    frame_h = 0.45 if motor else 0.1
    parts = wheels + [box(0, 0, radius + frame_h / 2 + 0.1, length - 2 * radius, 0.35 if motor else 0.06,
                          frame_h + 0.1, Material.PAINT if motor else Material.METAL, color),
                      box(length / 2 - radius - 0.1, 0, radius + 0.65, 0.1, 0.65, 0.08, Material.METAL, (0.2,) * 3)]
    height, width = radius + 0.75, 0.7
    if rider:
        clothes = _pick(rng, CLOTHES)
        seat = radius + frame_h + 0.2
        parts += [box(-0.15, 0, seat + 0.3, 0.32, 0.42, 0.6, Material.CLOTH, clothes),
                  ellipsoid(-0.05, 0, seat + 0.75, 0.13, 0.12, 0.15, *((Material.PAINT, (0.15,) * 3) if motor
                                                                        else (Material.SKIN, (0.8, 0.65, 0.5)))),
                  box(0.1, 0, seat - 0.15, 0.3, 0.4, 0.35, Material.CLOTH, clothes * 0.6)]
        height = seat + 0.9
    return parts, np.array([length, width, height])


def person(rng: np.random.Generator, raw_class: int = ADULT) -> Model:
    height = rng.uniform(1.0, 1.35) if raw_class == CHILD else rng.uniform(1.55, 1.92)
    s = height / 1.75
    if raw_class in (WORKER, OFFICER):
        top = HIVIS if raw_class == WORKER else (0.1, 0.15, 0.35)
        mat = Material.REFLECTIVE if raw_class == WORKER else Material.CLOTH
    else:
        top, mat = _pick(rng, CLOTHES), Material.CLOTH
    width = 0.5 * s
    parts = [box(0, 0, 0.42 * s, 0.24 * s, 0.34 * s, 0.84 * s, Material.CLOTH, _pick(rng, CLOTHES) * 0.7),
             box(0, 0, 1.13 * s, 0.28 * s, width, 0.58 * s, mat, top),
             ellipsoid(0, 0, 1.62 * s, 0.1 * s, 0.09 * s, 0.12 * s, Material.SKIN, _pick(rng, SKIN_TONES))]
    return parts, np.array([0.3 * s, width, 1.74 * s])


def stroller(rng: np.random.Generator) -> Model:
    color = _pick(rng, CLOTHES)
    parts = [box(0, 0, 0.65, 0.75, 0.5, 0.45, Material.CLOTH, color),
             box(-0.3, 0, 1.0, 0.1, 0.45, 0.06, Material.METAL, (0.2,) * 3)]
    parts += [cylinder(x, 0, 0.12, 0.12, 0.5, Material.RUBBER, TIRE, axis="y") for x in (-0.3, 0.3)]
    return parts, np.array([0.85, 0.55, 1.05])


def dog(rng: np.random.Generator) -> Model:
    color = _pick(rng, np.array([[0.55, 0.4, 0.25], [0.1, 0.1, 0.1], [0.85, 0.8, 0.7]]))
    parts = [box(0, 0, 0.2, 0.55, 0.2, 0.4, Material.FUR, color * 0.8),
             ellipsoid(0, 0, 0.45, 0.38, 0.16, 0.15, Material.FUR, color),
             ellipsoid(0.4, 0, 0.6, 0.13, 0.1, 0.11, Material.FUR, color)]
    return parts, np.array([1.06, 0.32, 0.71])


def cone(rng: np.random.Generator) -> Model:
    height = rng.uniform(0.5, 0.8)
    return [box(0, 0, 0.02, 0.38, 0.38, 0.04, Material.PLASTIC, (0.1, 0.1, 0.1)),
            cylinder(0, 0, height / 2 + 0.02, 0.1, height - 0.04, Material.REFLECTIVE, (0.98, 0.4, 0.05))], \
        np.array([0.38, 0.38, height])


def barrier(rng: np.random.Generator) -> Model:
    """Jersey barrier (concrete) or red/white plastic one."""
    if rng.random() < 0.5:
        return [box(0, 0, 0.2, 2.0, 0.6, 0.4, Material.CONCRETE, (0.7, 0.7, 0.68)),
                box(0, 0, 0.62, 2.0, 0.3, 0.44, Material.CONCRETE, (0.7, 0.7, 0.68))], np.array([2.0, 0.6, 0.84])
    return [box(0, 0, 0.5, 1.8, 0.45, 1.0, Material.REFLECTIVE, (0.9, 0.15, 0.12))], np.array([1.8, 0.45, 1.0])


def bin_on_wheels(rng: np.random.Generator) -> Model:
    color = _pick(rng, np.array([[0.1, 0.35, 0.15], [0.2, 0.2, 0.22], [0.15, 0.3, 0.6], [0.6, 0.45, 0.1]]))
    return [box(0, 0, 0.55, 0.7, 0.6, 1.0, Material.PLASTIC, color),
            box(0, 0, 1.07, 0.75, 0.65, 0.05, Material.PLASTIC, color * 0.8)], np.array([0.75, 0.65, 1.1])


def bicycle_rack(rng: np.random.Generator, length: float) -> Model:
    return [box(0, 0, 0.4, length, 0.06, 0.8, Material.METAL, (0.5, 0.5, 0.52))], np.array([length, 0.06, 0.8])


def building(rng: np.random.Generator, length: float, depth: float, height: float) -> Model:
    color = _pick(rng, FACADES)
    parts = [box(0, 0, height / 2, length, depth, height, Material.FACADE, color)]
    if rng.random() < 0.4 and height > 6:  # a rooftop structure
        parts.append(box(rng.uniform(-0.2, 0.2) * length, 0, height + 1.25, length * 0.3, depth * 0.4, 2.5,
                         Material.CONCRETE, color * 0.8))
        height += 2.5
    return parts, np.array([length, depth, height])


def entrance_steps(rng: np.random.Generator) -> Model:
    """Two low steps at a door (flat.other: stairs with at most 3 steps)."""
    width = rng.uniform(1.5, 3.0)
    return [box(0, 0, 0.075, 1.2, width, 0.15, Material.CONCRETE, (0.6, 0.6, 0.58)),
            box(-0.3, 0, 0.15 + 0.075, 0.6, width, 0.15, Material.CONCRETE, (0.6, 0.6, 0.58))], \
        np.array([1.2, width, 0.3])


def street_lamp(rng: np.random.Generator, reach: float) -> Model:
    """Pole with an arm reaching ``reach`` metres along +y (towards the road)."""
    height = rng.uniform(7.0, 9.0)
    grey = (0.45, 0.47, 0.5)
    return [cylinder(0, 0, height / 2, 0.1, height, Material.METAL, grey),
            box(0, reach / 2, height - 0.1, 0.12, reach, 0.12, Material.METAL, grey),
            box(0, reach - 0.35, height - 0.3, 0.3, 0.7, 0.2, Material.METAL, (0.9, 0.9, 0.8))], \
        np.array([0.3, 2 * reach, height])


def sign_post(rng: np.random.Generator) -> Model:
    height = rng.uniform(2.2, 3.0)
    plate = (_pick(rng, np.array([[0.9, 0.9, 0.9], [0.1, 0.25, 0.7], [0.8, 0.1, 0.1], [0.95, 0.8, 0.1]])))
    return [cylinder(0, 0, height / 2, 0.04, height, Material.METAL, (0.55, 0.55, 0.57)),
            box(0.04, 0, height - 0.35, 0.04, 0.65, 0.65, Material.SIGN, plate)], np.array([0.12, 0.65, height])


def fence(rng: np.random.Generator, length: float) -> Model:
    height = rng.uniform(1.0, 2.0)
    color = _pick(rng, np.array([[0.3, 0.3, 0.32], [0.55, 0.4, 0.25], [0.8, 0.8, 0.78]]))
    return [box(0, 0, height / 2, length, 0.06, height, Material.METAL, color)], np.array([length, 0.06, height])


def bus_shelter(rng: np.random.Generator) -> Model:
    return [box(0, 0, 2.45, 4.0, 1.6, 0.1, Material.METAL, (0.4, 0.42, 0.45)),
            box(0, -0.75, 1.25, 4.0, 0.06, 2.3, Material.GLASS, (0.5, 0.55, 0.6)),
            box(-1.95, 0, 1.25, 0.06, 1.5, 2.3, Material.GLASS, (0.5, 0.55, 0.6))], np.array([4.0, 1.6, 2.5])


def tree(rng: np.random.Generator) -> Model:
    trunk_h, trunk_r = rng.uniform(2.0, 4.0), rng.uniform(0.12, 0.3)
    rx, rz = rng.uniform(1.5, 3.5), rng.uniform(1.8, 3.5)
    green = np.array([0.18, 0.38, 0.12]) * rng.uniform(0.7, 1.2, 3)
    parts = [cylinder(0, 0, (trunk_h + 0.8) / 2, trunk_r, trunk_h + 0.8, Material.BARK, (0.3, 0.22, 0.15)),
             ellipsoid(0, 0, trunk_h + rz * 0.85, rx, rx * rng.uniform(0.85, 1.15), rz, Material.FOLIAGE, green)]
    return parts, np.array([2 * rx, 2 * rx * 1.15, trunk_h + 1.85 * rz])


def bush(rng: np.random.Generator) -> Model:
    r, h = rng.uniform(0.5, 1.5), rng.uniform(0.6, 1.6)
    green = np.array([0.2, 0.4, 0.15]) * rng.uniform(0.7, 1.2, 3)
    return [ellipsoid(0, 0, h * 0.45, r, r * 0.9, h * 0.55, Material.FOLIAGE, green)], np.array([2 * r, 2 * r, h])


def conifer(rng: np.random.Generator) -> Model:
    """A narrow evergreen: short trunk, tall crown."""
    trunk_h, trunk_r = rng.uniform(0.8, 1.8), rng.uniform(0.12, 0.25)
    rx, rz = rng.uniform(1.0, 2.2), rng.uniform(3.0, 6.0)
    green = np.array([0.1, 0.28, 0.12]) * rng.uniform(0.7, 1.2, 3)
    return [cylinder(0, 0, (trunk_h + 0.8) / 2, trunk_r, trunk_h + 0.8, Material.BARK, (0.3, 0.22, 0.15)),
            ellipsoid(0, 0, trunk_h + rz, rx, rx, rz, Material.FOLIAGE, green)], \
        np.array([2 * rx, 2 * rx, trunk_h + 2 * rz])


def mound(rng: np.random.Generator, grass) -> Model:
    """A low grassy hump of terrain (half an ellipsoid above the ground)."""
    rx, ry, h = rng.uniform(3, 9), rng.uniform(3, 9), rng.uniform(0.3, 1.5)
    color = np.clip(np.asarray(grass) * rng.uniform(0.9, 1.1, 3), 0, 1)
    return [ellipsoid(0, 0, 0, rx, ry, h, Material.GRASS, color)], np.array([2 * rx, 2 * ry, h])


def bollard(rng: np.random.Generator) -> Model:
    height, radius = rng.uniform(0.8, 1.1), rng.uniform(0.06, 0.12)
    color = _pick(rng, np.array([[0.2, 0.2, 0.22], [0.5, 0.5, 0.52], [0.85, 0.85, 0.8]]))
    return [cylinder(0, 0, height / 2, radius, height, Material.METAL, color)], np.array([2 * radius] * 2 + [height])


def utility_pole(rng: np.random.Generator) -> Model:
    """A wooden pole with a cross-arm."""
    height, radius = rng.uniform(8.0, 11.0), rng.uniform(0.12, 0.16)
    wood = (0.35, 0.27, 0.18)
    return [cylinder(0, 0, height / 2, radius, height, Material.BARK, wood),
            box(0, 0, height - 0.6, 0.12, 1.8, 0.12, Material.BARK, wood)], np.array([2 * radius, 1.8, height])


def hedge(rng: np.random.Generator, length: float) -> Model:
    h = rng.uniform(0.8, 1.8)
    green = np.array([0.15, 0.35, 0.12]) * rng.uniform(0.8, 1.2, 3)
    return [box(0, 0, h / 2, length, 0.8, h, Material.FOLIAGE, green)], np.array([length, 0.8, h])


def ego_body() -> Body:
    """The data-collection car itself, in the ego frame (origin at the rear axle on the ground).

    Low enough that every rig sensor sits above it: the lidar's lowest rings and the back cameras see it.
    """
    grey = (0.22, 0.23, 0.25)
    return Body([box(1.3, 0, 0.6, 4.1, 1.74, 0.7, Material.PAINT, grey),
                 box(0.45, 0, 1.165, 2.0, 1.2, 0.43, Material.GLASS, GLASS_TINT)], EGO)
