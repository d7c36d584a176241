"""A procedural street scene: road layout, static and moving actors, and the ego car's motion.

Everything lives in a street frame (x along the street, y to the left, z up, ground at z = 0); the scene's
``street_to_global`` places it in the dataset's global frame.  The street is laid out as nuScenes streets
look: traffic lanes (right-hand traffic), optional median, bike and parking lanes, raised sidewalks with
lamps, signs and trees along the curb, then a frontage of buildings, gardens, parking lots and at most one
construction site.  Vehicles drive in their lanes at constant speed, pedestrians walk along the sidewalks.

Two street styles (:data:`STREET_STYLES`): ``classic``, the streets the shipped model was trained on (kept
bit for bit), and ``varied``: wider ranges of lanes, lane widths and curb heights, grass verges and medians,
houses with front gardens, parks with rolling terrain, bollards and utility poles, roadworks in the parking
lane, and every listed nuScenes object class (car, truck, bus, trailer, construction vehicle, motorcycle,
bicycle, pedestrian, barrier, traffic cone) on every street.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np

from ...errors import ConfigError
from . import models as m
from .raycast import Body

SAMPLE_PERIOD_S = 0.5  # nuScenes keyframes come at 2 Hz
CAMERA_FAR = 150.0  # metres: the cameras render bodies up to here (the ground and sky beyond)
MARGIN = CAMERA_FAR + 20.0  # street laid out beyond the ego's first and last positions
SIDEWALK_HEIGHT = 0.15
THING_CLASSES = range(1, 24)  # raw classes with instances (nuScenes-panoptic things)


@dataclass(frozen=True)
class StreetStyle:
    """The ranges a street's layout is drawn from (metres unless said); see :data:`STREET_STYLES`."""

    lane_width: tuple[float, float]
    lanes: tuple[int, ...]  # traffic lanes per direction, drawn ...
    lanes_p: Optional[tuple[float, ...]]  # ... with these shares (None: uniformly)
    median_p: float
    median_width: tuple[float, float]
    grass_median_p: float  # share of medians that are grass islands (terrain) rather than concrete
    bike_p: float
    parking_p: float
    sidewalk: tuple[float, float]
    curb_height: Optional[tuple[float, float]]  # None: SIDEWALK_HEIGHT
    verge_p: float  # grass verge between curb and sidewalk, per side
    verge_width: tuple[float, float]
    frontage: dict[str, float]  # kind of plot -> share
    plot_length: dict[str, tuple[float, float]]  # kind of plot -> length along the street
    setback: tuple[float, float]  # of buildings behind the sidewalk
    storeys: tuple[tuple[float, float], tuple[float, float], tuple[float, float]]  # low, mid, high heights
    site_p: float  # a construction site mid-scene
    site_trailer_p: float
    bus_stop_p: float  # a stopped bus and its shelter, per parking lane
    extras: bool  # a parking lane on the ego's side with roadworks, a bus stop and motorcycles mid-scene;
    # trees on the verges, bollards, utility poles


_CLASSIC_PLOTS = {"building": (10.0, 35.0), "green": (15.0, 40.0), "lot": (20.0, 40.0), "site": (28.0, 40.0)}
STREET_STYLES = {
    "classic": StreetStyle(
        lane_width=(3.2, 3.7), lanes=(1, 2), lanes_p=None, median_p=0.25, median_width=(1.2, 2.5),
        grass_median_p=0.0, bike_p=0.35, parking_p=0.7, sidewalk=(2.8, 5.0), curb_height=None, verge_p=0.0,
        verge_width=(0.0, 0.0), frontage={"building": 0.65, "green": 0.22, "lot": 0.13}, plot_length=_CLASSIC_PLOTS,
        setback=(0.0, 3.0), storeys=((4.0, 8.0), (8.0, 16.0), (16.0, 30.0)), site_p=0.8, site_trailer_p=0.6,
        bus_stop_p=0.3, extras=False),
    "varied": StreetStyle(
        lane_width=(2.8, 3.9), lanes=(1, 2, 3), lanes_p=(0.4, 0.45, 0.15), median_p=0.3, median_width=(1.2, 4.0),
        grass_median_p=0.5, bike_p=0.4, parking_p=0.7, sidewalk=(1.8, 5.0), curb_height=(0.08, 0.22),
        verge_p=0.5, verge_width=(1.0, 3.5),
        frontage={"building": 0.4, "house": 0.2, "green": 0.12, "park": 0.1, "lot": 0.18},
        plot_length={**_CLASSIC_PLOTS, "house": (9.0, 16.0), "park": (25.0, 50.0)},
        setback=(0.0, 8.0), storeys=((3.0, 7.0), (7.0, 16.0), (16.0, 40.0)), site_p=1.0, site_trailer_p=1.0,
        bus_stop_p=0.5, extras=True),
}


def street_style_named(name: str) -> StreetStyle:
    if name not in STREET_STYLES:
        raise ConfigError(f"synthetic street style {name!r}: use one of {list(STREET_STYLES)}")
    return STREET_STYLES[name]


@dataclass
class Actor:
    """A body placed in the street; ``velocity`` m/s along its heading, constant."""

    body: Body
    size: np.ndarray  # annotation box (length, width, height)
    centre: np.ndarray  # box centre at scene time 0
    yaw: float
    velocity: float = 0.0
    attribute: str = ""


@dataclass
class Street:
    road_right: float  # y of the road's right edge (negative)
    road_left: float
    sidewalk_right: float  # y of the sidewalks' outer edges
    sidewalk_left: float
    markings: list[tuple[float, float, bool, tuple[float, float, float]]]  # (y, half width, dashed, rgb)
    lots: list[tuple[float, float, float, float]] = field(default_factory=list)  # x0, x1, y0, y1 driveable
    asphalt: tuple[float, float, float] = (0.3, 0.3, 0.31)
    grass: tuple[float, float, float] = (0.3, 0.42, 0.18)

    def ground(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw class, material and albedo of the ground (z = 0) at street-frame points (N, 2)."""
        x, y = xy[:, 0], xy[:, 1]
        road = (y >= self.road_right) & (y <= self.road_left)
        for x0, x1, y0, y1 in self.lots:
            road |= (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
        paint = np.zeros(len(xy), bool)
        color = np.where(road[:, None], np.float32(self.asphalt), np.float32(self.grass))
        for y_line, half, dashed, rgb in self.markings:
            line = road & (np.abs(y - y_line) <= half)
            if dashed:
                line &= np.mod(x, 9.0) < 3.0
            paint |= line
            color[line] = rgb
        raw = np.where(road, m.DRIVEABLE, m.TERRAIN).astype(np.uint8)
        material = np.where(paint, m.Material.MARKING, np.where(road, m.Material.ASPHALT, m.Material.GRASS))
        return raw, material.astype(np.uint8), color


@dataclass
class Scene:
    index: int
    name: str
    description: str
    street: Street
    actors: list[Actor]
    length: float
    ego_start: np.ndarray  # (x, y) at time 0
    ego_speed: float
    wander: tuple[float, float, float]  # lateral sway: amplitude (m), angular frequency (rad/s), phase
    sun: np.ndarray  # unit vector towards the sun, street frame
    street_to_global: np.ndarray
    ego: Body = field(default_factory=m.ego_body)

    def __post_init__(self) -> None:
        self._centres = np.array([a.centre for a in self.actors])
        yaw = np.array([a.yaw for a in self.actors])
        self._velocity = np.array([a.velocity for a in self.actors])[:, None] * np.c_[np.cos(yaw), np.sin(yaw),
                                                                                        np.zeros_like(yaw)]
        self._radius = np.array([a.body.radius for a in self.actors])
        c, s = np.cos(yaw), np.sin(yaw)
        self._rotation = np.zeros((len(yaw), 3, 3))
        self._rotation[:, 0, 0], self._rotation[:, 0, 1], self._rotation[:, 1, 0], self._rotation[:, 1, 1] = c, -s, s, c
        self._rotation[:, 2, 2] = 1

    def ego_pose(self, t: float) -> np.ndarray:
        """Ego -> street at scene time ``t`` (seconds): constant speed with a slight lateral sway."""
        amp, omega, phase = self.wander
        yaw = np.arctan2(amp * omega * np.cos(omega * t + phase), self.ego_speed)
        pose = np.eye(4)
        pose[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
        pose[:2, 3] = self.ego_start + (self.ego_speed * t, amp * np.sin(omega * t + phase))
        return pose

    def actor_centres(self, t: float) -> np.ndarray:
        return self._centres + self._velocity * t

    def place(self, t: float, sensor_to_street: np.ndarray,
              far: float) -> Iterator[tuple[Body, np.ndarray, np.ndarray]]:
        """Bodies within ``far`` of the sensor at time ``t``, posed in the sensor frame (the ego car included)."""
        rot_t, origin = sensor_to_street[:3, :3].T, sensor_to_street[:3, 3]
        centres = self.actor_centres(t)
        near = np.flatnonzero(np.linalg.norm(centres - origin, axis=1) - self._radius <= far)
        for i in near:
            yield self.actors[i].body, rot_t @ self._rotation[i], rot_t @ (centres[i] - origin)
        ego = self.ego_pose(t)
        yield self.ego, rot_t @ ego[:3, :3], rot_t @ (ego[:3, 3] - origin)


class _Builder:
    """Collects actors while the layout is decided; numbers the instances of thing classes."""

    def __init__(self, rng: np.random.Generator, style: StreetStyle):
        self.rng = rng
        self.style = style
        self.actors: list[Actor] = []
        self.instances = 0
        self.closed: list[tuple[int, float, float]] = []  # (side, x0, x1) of curb lanes closed to parking

    def add(self, model: m.Model, raw_class: int, x: float, y: float, yaw: float = 0.0, velocity: float = 0.0,
            attribute: str = "", z0: float = 0.0) -> None:
        """Place a model standing at height ``z0`` with its box centre over (x, y)."""
        instance = 0
        if raw_class in THING_CLASSES:
            self.instances += 1
            instance = self.instances
        self.actors.append(Actor(m.make_body(model, raw_class, instance), model[1],
                                 np.array([x, y, z0 + model[1][2] / 2]), yaw, velocity, attribute))


# Road vehicles and their shares, parked and moving (nuScenes-like: mostly cars, then trucks).
_PARKED = {"car": 0.66, "van": 0.12, "truck": 0.08, "trailer": 0.06, "motorcycle": 0.05, "police": 0.02,
           "ambulance": 0.01}
_MOVING = {"car": 0.60, "van": 0.10, "truck": 0.12, "bus": 0.05, "bendy_bus": 0.02, "motorcycle": 0.06,
           "police": 0.03, "ambulance": 0.02}


def _vehicle(rng: np.random.Generator, parked: bool) -> tuple[m.Model, int]:
    """A random road vehicle: its model and raw class."""
    shares = _PARKED if parked else _MOVING
    kind = str(rng.choice(list(shares), p=list(shares.values())))
    if kind == "car":
        return m.car(rng), m.CAR
    if kind == "van":
        return m.van(rng), m.CAR
    if kind == "truck":
        return m.truck(rng), m.TRUCK
    if kind == "trailer":
        return m.trailer(rng), m.TRAILER
    if kind in ("bus", "bendy_bus"):
        return m.bus(rng, bendy=kind == "bendy_bus"), m.BENDY_BUS if kind == "bendy_bus" else m.RIGID_BUS
    if kind == "motorcycle":
        return m.two_wheeler(rng, motor=True, rider=not parked), m.MOTORCYCLE
    if kind == "police":
        return m.police_car(rng), m.POLICE
    return m.ambulance(rng), m.AMBULANCE


def _fill_lane(b: _Builder, y: float, yaw: float, speed: float, x0: float, x1: float, gap: tuple[float, float],
               vehicles: Callable[[], tuple[m.Model, int]], attribute: str) -> None:
    """A queue of vehicles within [x0, x1] along a lane (positions at time 0), moving at ``speed``.

    ``yaw`` is 0 (heading +x) or pi; a long truck may tow a trailer, which then follows behind it.
    """
    x = x0 + b.rng.uniform(*gap)
    while True:
        model, raw = vehicles()
        towed = m.trailer(b.rng) if raw == m.TRUCK and model[1][0] > 6 and b.rng.random() < 0.4 else None
        chain = [model, towed] if towed else [model]
        if yaw == 0.0:  # heading +x: the last of the chain comes first along x
            chain.reverse()
        total = sum(c[1][0] for c in chain) + 0.6 * (len(chain) - 1)
        if x + total > x1:
            return
        lateral = y + b.rng.normal(0, 0.12)
        for c in chain:
            b.add(c, m.TRAILER if c is towed else raw, x + c[1][0] / 2, lateral, yaw + b.rng.normal(0, 0.01),
                  speed, attribute)
            x += c[1][0] + 0.6
        x += b.rng.uniform(*gap) - 0.6


def _cover(ego_start: float, ego_gain: float) -> tuple[float, float]:
    """Time-0 x range a queue must fill to surround the ego all scene long.

    ``ego_gain``: how far the ego moves relative to the queue during the scene (its speed minus the queue's,
    times the duration).
    """
    return ego_start - MARGIN + min(0.0, ego_gain), ego_start + MARGIN + max(0.0, ego_gain)


def scene_name(index: int) -> str:
    return f"scene-{index:04d}"


@dataclass
class _CrossSection:
    """Where things are across the street (y); side -1 is right of the ego's lane, +1 left (oncoming)."""

    lane_width: float
    lanes: int  # traffic lanes per direction
    median: float  # width of the raised median, 0 for none (then a double yellow line)
    edge: dict[int, float]  # road edge = curb, per side
    sidewalk: dict[int, float]  # sidewalk width, per side
    parking: dict[int, float]  # parking lane centre, on the sides that have one
    bike: dict[int, float]  # bike lane centre, on the sides that have one
    markings: list[tuple[float, float, bool, tuple[float, float, float]]]
    curb_height: float = SIDEWALK_HEIGHT  # of the sidewalks (and verges) above the road
    grass_median: bool = False
    verge: dict[int, float] = field(default_factory=dict)  # grass strip between curb and sidewalk, per side

    def lane_centre(self, side: int, lane: int) -> float:
        return side * (self.median / 2 + (lane + 0.5) * self.lane_width)

    def curb(self, side: int, d: float) -> float:
        """y at distance d from the road edge, onto the verge or sidewalk."""
        return self.edge[side] + side * d

    def walk(self, side: int, d: float) -> float:
        """y at distance d from the sidewalk's road-side edge (beyond the sidewalk when d > its width)."""
        return self.edge[side] + side * (self.verge.get(side, 0.0) + d)


def _cross_section(rng: np.random.Generator, style: StreetStyle) -> _CrossSection:
    lane_width = float(rng.uniform(*style.lane_width))
    lanes = int(rng.choice(list(style.lanes)) if style.lanes_p is None else rng.choice(list(style.lanes),
                                                                                      p=list(style.lanes_p)))
    median = float(rng.uniform(*style.median_width)) if rng.random() < style.median_p else 0.0
    white, yellow = (0.9, 0.9, 0.88), (0.9, 0.75, 0.15)
    cs = _CrossSection(lane_width, lanes, median, {}, {}, {}, {},
                       [] if median else [(-0.12, 0.06, False, yellow), (0.12, 0.06, False, yellow)])
    for side in (-1, 1):
        y = side * median / 2
        for lane in range(1, lanes):
            cs.markings.append((y + side * lane * lane_width, 0.06, True, white))
        y += side * lanes * lane_width
        cs.markings.append((y, 0.08, False, white))
        if rng.random() < style.bike_p:
            cs.bike[side] = y + side * 0.8
            y += side * 1.6
            cs.markings.append((y, 0.08, False, white))
        if rng.random() < style.parking_p or (style.extras and side < 0):  # extras: roadworks need one
            cs.parking[side] = y + side * 1.15
            y += side * 2.3
        cs.edge[side] = y
        cs.sidewalk[side] = float(rng.uniform(*style.sidewalk))
        if style.verge_p and rng.random() < style.verge_p:
            cs.verge[side] = float(rng.uniform(*style.verge_width))
    if style.curb_height is not None:
        cs.curb_height = float(rng.uniform(*style.curb_height))
    cs.grass_median = bool(median and style.grass_median_p and rng.random() < style.grass_median_p)
    return cs


def build_scene(seed: int, index: int, frames: int, street_style: str = "classic") -> Scene:
    """The ``index``-th street of world ``seed`` for ``frames`` keyframes, in a style of :data:`STREET_STYLES`
    (deterministic; each style draws its streets from its own random stream)."""
    style = street_style_named(street_style)
    stream = list(STREET_STYLES).index(street_style)  # classic: 0, the stream its streets always came from
    rng = np.random.default_rng([seed, index, stream] if stream else [seed, index])
    b = _Builder(rng, style)
    speed = float(rng.uniform(5.0, 10.0))
    duration = (frames - 1) * SAMPLE_PERIOD_S + 0.1
    travel = speed * duration
    start_x, length = MARGIN, travel + 2 * MARGIN
    cs = _cross_section(rng, style)
    street = Street(cs.edge[-1], cs.edge[1], cs.walk(-1, cs.sidewalk[-1]), cs.walk(1, cs.sidewalk[1]), cs.markings,
                    asphalt=tuple(np.array([0.3, 0.3, 0.31]) * rng.uniform(0.8, 1.15)),
                    grass=tuple(np.array([0.3, 0.42, 0.18]) * rng.uniform(0.8, 1.15, 3)))
    ego_lane = int(rng.integers(cs.lanes))

    h = cs.curb_height
    for side in (-1, 1):  # sidewalks (and grass verges): raised slabs in 20 m pieces
        for x in np.arange(0.0, length, 20.0):
            b.add(([m.box(0, 0, h / 2, 20.0, cs.sidewalk[side], h, m.Material.CONCRETE,
                          (0.62, 0.62, 0.6))], np.array([20.0, cs.sidewalk[side], h])),
                  m.SIDEWALK, x + 10.0, cs.walk(side, cs.sidewalk[side] / 2))
            if side in cs.verge:
                b.add(([m.box(0, 0, h / 2, 20.0, cs.verge[side], h, m.Material.GRASS, street.grass)],
                       np.array([20.0, cs.verge[side], h])), m.TERRAIN, x + 10.0, cs.curb(side, cs.verge[side] / 2))
    island = (m.Material.GRASS, street.grass, m.TERRAIN) if cs.grass_median else \
        (m.Material.CONCRETE, (0.55, 0.55, 0.52), m.OTHER_FLAT)
    for x in np.arange(0.0, length, 36.0) if cs.median else []:  # median: raised islands, gaps to turn
        b.add(([m.box(0, 0, h / 2, 30.0, cs.median, h, island[0], island[1])], np.array([30.0, cs.median, h])),
              island[2], x + 15.0, 0.0)

    site_side = int(rng.choice([-1, 1])) if rng.random() < style.site_p else 0  # one construction site, mid-scene
    kinds = list(style.frontage)
    for side in (-1, 1):
        x = float(rng.uniform(0, 5))
        while x < length:
            kind = str(rng.choice(kinds, p=[style.frontage[k] for k in kinds]))
            if side == site_side and abs(x - (start_x + travel / 2)) < 40:
                kind, site_side = "site", 0
            seg = float({k: rng.uniform(*span) for k, span in style.plot_length.items()}[kind])
            _frontage(b, kind, x, seg, cs, side, street)
            x += seg + (float(rng.uniform(0, 6)) if kind == "building" else 0.0)
    if style.extras:
        _roadworks(b, cs, start_x + travel / 2)  # before the parked vehicles, which keep clear of it
    _curb_furniture(b, cs, length)
    _parked_vehicles(b, cs, length, (start_x, start_x + travel))
    _traffic(b, cs, ego_lane, speed, start_x, duration)
    _pedestrians(b, cs, start_x, travel)
    if style.extras:
        _street_extras(b, cs, length, street)

    yaw_g = float(rng.choice([0, 0.5, 1, 1.5]) * np.pi + rng.uniform(-0.3, 0.3))
    street_to_global = np.eye(4)
    street_to_global[:2, :2] = [[np.cos(yaw_g), -np.sin(yaw_g)], [np.sin(yaw_g), np.cos(yaw_g)]]
    corners = np.array([[0, -80], [0, 80], [length, -80], [length, 80]]) @ street_to_global[:2, :2].T
    street_to_global[:2, 3] = 100.0 - corners.min(0)  # keep the map's global coordinates positive
    sun_az, sun_el = rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(25, 65))
    sun = np.array([np.cos(sun_az) * np.cos(sun_el), np.sin(sun_az) * np.cos(sun_el), np.sin(sun_el)])
    description = (f"synthetic street: {cs.lanes}+{cs.lanes} lanes{', median' if cs.median else ''}, "
                   f"{len(cs.parking)} parking lane(s), {len(cs.bike)} bike lane(s), ego at {speed:.1f} m/s")
    wander = (float(rng.uniform(0.05, 0.25)), float(2 * np.pi / rng.uniform(6, 12)), float(rng.uniform(0, 2 * np.pi)))
    return Scene(index, scene_name(index), description, street, b.actors, length,
                 np.array([start_x, cs.lane_centre(-1, ego_lane)]), speed, wander, sun, street_to_global)


def _parked_vehicles(b: _Builder, cs: _CrossSection, length: float, stop_range: tuple[float, float]) -> None:
    """Parking lanes: vehicles nose to tail with gaps, maybe a bus at a stop (with its shelter)."""
    rng = b.rng
    for side, y in cs.parking.items():
        yaw = 0.0 if side < 0 else np.pi  # parked along the traffic of that side
        closed = [(x0, x1) for s, x0, x1 in b.closed if s == side]
        stop = float(rng.uniform(*stop_range))
        if rng.random() < b.style.bus_stop_p and not any(x0 - 8 < stop < x1 + 8 for x0, x1 in closed):
            b.add(m.bus(rng), m.RIGID_BUS, stop, y, yaw, attribute="vehicle.stopped")
            b.add(m.bus_shelter(rng), m.MANMADE, stop, cs.walk(side, cs.sidewalk[side] - 0.9), yaw)
            closed.append((stop - 8, stop + 8))
        x = float(rng.uniform(0, 10))
        while x < length:
            if rng.random() < 0.3:
                x += float(rng.uniform(4, 15))
                continue
            model, raw = _vehicle(rng, parked=True)
            clash = [x1 for x0, x1 in closed if x < x1 and x + model[1][0] > x0]
            if clash:
                x = max(clash)
                continue
            b.add(model, raw, x + model[1][0] / 2, y + rng.normal(0, 0.1), yaw + rng.normal(0, 0.03),
                  attribute="vehicle.parked")
            x += model[1][0] + float(rng.uniform(0.6, 2.5))


def _traffic(b: _Builder, cs: _CrossSection, ego_lane: int, speed: float, start_x: float, duration: float) -> None:
    """Queues of vehicles in every lane and cyclists in the bike lanes, each at its lane's constant speed."""
    rng = b.rng
    for side in (-1, 1):
        heading = 0.0 if side < 0 else np.pi
        for lane in range(cs.lanes):
            y = cs.lane_centre(side, lane)
            if side < 0 and lane == ego_lane:  # vehicles ahead of and behind the ego, at its speed
                for lo in (start_x + 13, start_x - 60):
                    if rng.random() < 0.6:
                        _fill_lane(b, y, heading, speed, lo, lo + 45, (2.0, 18.0), lambda: _vehicle(rng, False),
                                   "vehicle.moving")
                continue
            # a neighbouring lane never keeps pace with the ego (it would block a camera all scene long)
            v = speed + float(rng.choice([-1, 1]) * rng.uniform(1.5, 3)) if side < 0 else float(rng.uniform(6, 12))
            _fill_lane(b, y, heading, v, *_cover(start_x, (speed + side * v) * duration), (8.0, 45.0),
                       lambda: _vehicle(rng, False), "vehicle.moving")
        if side in cs.bike:
            v = float(rng.uniform(3, 6))
            _fill_lane(b, cs.bike[side], heading, v, *_cover(start_x, (speed + side * v) * duration), (15.0, 80.0),
                       lambda: (m.two_wheeler(rng, motor=False, rider=True), m.BICYCLE), "cycle.with_rider")


def _pedestrians(b: _Builder, cs: _CrossSection, start_x: float, travel: float) -> None:
    """People walking along or standing on the sidewalks, a few with a dog or a stroller."""
    rng = b.rng
    for side in (-1, 1):
        lo, hi = 1.7, max(1.8, cs.sidewalk[side] - 2.1)  # clear of curb furniture and of racks and bins
        x0, x1 = _cover(start_x, travel)
        for x in np.sort(rng.uniform(x0, x1, int((x1 - x0) / 9))):
            walking = rng.random() < 0.7
            yaw = float(rng.choice([0.0, np.pi])) if walking else float(rng.uniform(-np.pi, np.pi))
            v = float(rng.uniform(0.8, 1.6)) if walking else 0.0
            y = cs.walk(side, float(rng.uniform(lo, hi)))
            raw = int(rng.choice([m.ADULT, m.CHILD, m.OFFICER], p=[0.9, 0.07, 0.03]))
            b.add(m.person(rng, raw), raw, x, y, yaw, v, "pedestrian.moving" if walking else "pedestrian.standing",
                  cs.curb_height)
            ahead = np.array([np.cos(yaw), np.sin(yaw)])
            if rng.random() < 0.05:
                b.add(m.dog(rng), m.ANIMAL, *(np.array([x, y]) + 0.7 * ahead + (0, -side * 0.5)), yaw, v,
                      z0=cs.curb_height)
            elif rng.random() < 0.04:
                b.add(m.stroller(rng), m.STROLLER, *(np.array([x, y]) + 0.75 * ahead), yaw, v, z0=cs.curb_height)


def _frontage(b: _Builder, kind: str, x: float, seg: float, cs: _CrossSection, side: int, street: Street) -> None:
    """Fill the strip beyond one side's sidewalk from ``x`` to ``x + seg``."""
    rng = b.rng
    base = cs.walk(side, cs.sidewalk[side])

    def out(d: float) -> float:
        """y at distance d beyond the sidewalk."""
        return base + side * d

    toward_road = -side * np.pi / 2  # yaw whose +x points across the street, to the road
    if kind == "building":
        setback, depth = float(rng.uniform(*b.style.setback)), float(rng.uniform(10, 20))
        height = float(rng.choice([rng.uniform(*span) for span in b.style.storeys], p=[0.35, 0.45, 0.2]))
        b.add(m.building(rng, seg, depth, height), m.MANMADE, x + seg / 2, out(setback + depth / 2))
        if setback > 1.4 and rng.random() < 0.4:
            b.add(m.entrance_steps(rng), m.OTHER_FLAT, x + float(rng.uniform(2, seg - 2)), out(setback - 0.6),
                  toward_road)
        elif setback > 1.2 and rng.random() < 0.5:
            b.add(m.hedge(rng, seg * 0.8), m.VEGETATION, x + seg / 2, out(0.5))
    elif kind == "green":
        if rng.random() < 0.6:
            b.add(m.fence(rng, seg), m.MANMADE, x + seg / 2, out(0.3))
        for _ in range(int(seg / 7)):
            b.add(m.tree(rng), m.VEGETATION, x + float(rng.uniform(2, seg - 2)), out(float(rng.uniform(5, 16))))
        for _ in range(int(seg / 5)):
            b.add(m.bush(rng), m.VEGETATION, x + float(rng.uniform(1, seg - 1)), out(float(rng.uniform(1.8, 14))))
    elif kind == "house":  # a low house behind a front garden: fence or hedge, bushes, maybe a tree
        setback, depth = float(rng.uniform(4, 10)), float(rng.uniform(8, 12))
        width = seg - float(rng.uniform(2, 4))
        b.add(m.building(rng, width, depth, float(rng.uniform(*b.style.storeys[0]))), m.MANMADE, x + seg / 2,
              out(setback + depth / 2))
        if rng.random() < 0.6:
            b.add(m.fence(rng, seg - 0.4), m.MANMADE, x + seg / 2, out(0.3))
        else:
            b.add(m.hedge(rng, seg - 0.4), m.VEGETATION, x + seg / 2, out(0.6))
        for _ in range(int(rng.integers(0, 3))):
            b.add(m.bush(rng), m.VEGETATION, x + float(rng.uniform(1.5, seg - 1.5)),
                  out(float(rng.uniform(2, setback))))
        if rng.random() < 0.5:
            b.add(m.tree(rng), m.VEGETATION, x + float(rng.uniform(2, seg - 2)), out(setback / 2 + 0.5))
    elif kind == "park":  # rolling grass (terrain) with trees, conifers and bushes
        for _ in range(int(seg / 12) + 1):
            model = m.mound(rng, street.grass)  # kept clear of the sidewalk
            b.add(model, m.TERRAIN, x + float(rng.uniform(3, seg - 3)),
                  out(model[1][1] / 2 + float(rng.uniform(0.5, 8))))
        for _ in range(int(seg / 8)):
            model = m.conifer(rng) if rng.random() < 0.4 else m.tree(rng)
            b.add(model, m.VEGETATION, x + float(rng.uniform(2, seg - 2)), out(float(rng.uniform(4, 20))))
        for _ in range(int(seg / 6)):
            b.add(m.bush(rng), m.VEGETATION, x + float(rng.uniform(1, seg - 1)), out(float(rng.uniform(1.5, 20))))
    elif kind == "lot":
        depth = float(rng.uniform(14, 20))
        street.lots.append((x, x + seg, *sorted((base, out(depth)))))
        for px in np.arange(x + 1.6, x + seg - 1.6, 2.7):
            if rng.random() < 0.6:
                model, raw = (m.car(rng), m.CAR) if rng.random() < 0.85 else (m.van(rng), m.CAR)
                b.add(model, raw, px, out(depth - 3.0), toward_road + float(rng.choice([0, np.pi])),
                      attribute="vehicle.parked")
    else:  # construction site: excavator, workers, barriers along the sidewalk, a container, cones
        b.add(m.excavator(rng), m.CONSTRUCTION, x + seg / 2, out(float(rng.uniform(9, 13))),
              float(rng.uniform(-np.pi, np.pi)), attribute="vehicle.stopped")
        for _ in range(int(rng.integers(1, 4))):
            b.add(m.person(rng, m.WORKER), m.WORKER, x + float(rng.uniform(3, seg - 3)), out(float(rng.uniform(3, 8))),
                  float(rng.uniform(-np.pi, np.pi)), attribute="pedestrian.standing")
        if rng.random() < b.style.site_trailer_p:
            b.add(m.trailer(rng), m.TRAILER, x + seg - 8, out(18.0), toward_road, attribute="vehicle.parked")
        for bx in np.arange(x + 1.1, x + seg - 1.0, 2.1):
            b.add(m.barrier(rng), m.BARRIER, bx, out(0.5), 0.0)
        for cx in np.arange(x + 2, x + seg, float(rng.uniform(2.5, 4))):
            b.add(m.cone(rng), m.CONE, cx, out(2.5), 0.0)
        if side in cs.parking:  # the site closes the parking lane along it: cones instead of cars
            b.closed.append((side, x, x + seg))
            for cx in np.arange(x + 1, x + seg, float(rng.uniform(3, 5))):
                b.add(m.cone(rng), m.CONE, cx, cs.parking[side], 0.0)
        for _ in range(int(rng.integers(2, 6))):
            b.add(m.cone(rng), m.CONE, x + float(rng.uniform(1, seg - 1)), out(float(rng.uniform(3, 14))), 0.0)


def _curb_furniture(b: _Builder, cs: _CrossSection, length: float) -> None:
    """Lamps, signs and trees along the curb; bins, bike racks with bicycles along the sidewalk's far side."""
    rng = b.rng
    for side in (-1, 1):
        taken: list[float] = []

        def free(x: float, room: float) -> bool:
            return all(abs(x - t) > room for t in taken)

        z0 = cs.curb_height
        lamp_reach = float(rng.uniform(1.5, 3.0))
        for x in np.arange(rng.uniform(0, 30), length, rng.uniform(25, 35)):
            taken.append(float(x))
            # the lamp's arm points along its +y: yaw 0 reaches left (right side), pi reaches right
            b.add(m.street_lamp(rng, lamp_reach), m.MANMADE, float(x), cs.curb(side, 0.5), 0.0 if side < 0 else np.pi,
                  z0=z0)
        if rng.random() < 0.65:
            for x in np.arange(rng.uniform(0, 10), length, rng.uniform(8, 15)):
                if free(x, 2.5):
                    taken.append(float(x))
                    b.add(m.tree(rng), m.VEGETATION, float(x), cs.curb(side, 1.0), z0=z0)
        for x in rng.uniform(0, length, int(length / 40)):
            if free(x, 2.0):
                taken.append(float(x))
                b.add(m.sign_post(rng), m.MANMADE, float(x), cs.curb(side, 0.4), z0=z0)
        for x in rng.uniform(0, length, int(length / 35)):
            b.add(m.bin_on_wheels(rng), m.PUSHABLE, float(x), cs.walk(side, cs.sidewalk[side] - 0.4), z0=z0)
        rack_y = cs.walk(side, cs.sidewalk[side] - 1.0)
        for x in rng.uniform(0, length, int(length / 90)):
            rack = 4.0
            b.add(m.bicycle_rack(rng, rack), m.BICYCLE_RACK, float(x), rack_y, z0=z0)
            for bx in np.arange(x - rack / 2 + 0.4, x + rack / 2, 0.8):
                if rng.random() < 0.6:
                    b.add(m.two_wheeler(rng, motor=False, rider=False), m.BICYCLE, float(bx), rack_y,
                          np.pi / 2 + rng.normal(0, 0.1), attribute="cycle.without_rider", z0=z0)


def _roadworks(b: _Builder, cs: _CrossSection, mid: float) -> None:
    """Mid-scene, in the parking lane on the ego's side: a bus stop, a row of parked motorcycles, and roadworks
    (a works truck behind barriers, cones tapering in front); the parked cars keep clear of all three."""
    rng, y = b.rng, cs.parking[-1]
    stop = mid - float(rng.uniform(20, 45))
    b.add(m.bus(rng), m.RIGID_BUS, stop, y, 0.0, attribute="vehicle.stopped")
    b.add(m.bus_shelter(rng), m.MANMADE, stop, cs.walk(-1, cs.sidewalk[-1] - 0.9), 0.0)
    b.closed.append((-1, stop - 8, stop + 8))
    x0 = mid + float(rng.uniform(0, 20))
    for k in range(int(rng.integers(2, 5))):  # motorcycles parked at an angle
        b.add(m.two_wheeler(rng, motor=True, rider=False), m.MOTORCYCLE, x0 + 1.1 * k, y - 0.2,
              np.pi / 2 + float(rng.normal(0, 0.1)), attribute="cycle.without_rider")
    works = x0 + 6.0
    length = float(rng.uniform(16, 30))
    b.closed.append((-1, x0 - 1, works + length + 3))
    model = m.truck(rng)
    b.add(model, m.TRUCK, works + length / 2, y + 0.1, 0.0, attribute="vehicle.parked")
    for bx in np.arange(works + 1.0, works + length, 2.1):  # barriers along the lane's road side
        b.add(m.barrier(rng), m.BARRIER, float(bx), y + 1.0, 0.0)
    for k, cx in enumerate(np.arange(works - 6.0, works, 1.5)):  # a taper of cones in front
        b.add(m.cone(rng), m.CONE, float(cx), y - 1.0 + 0.45 * k, 0.0)
    for cx in np.arange(works + length + 0.5, works + length + 3.0, 1.2):
        b.add(m.cone(rng), m.CONE, float(cx), y + 0.8, 0.0)


def _street_extras(b: _Builder, cs: _CrossSection, length: float, street: Street) -> None:
    """Trees along the verges, bollards guarding stretches of curb, utility poles behind the sidewalks."""
    rng, z0 = b.rng, cs.curb_height
    for side in (-1, 1):
        if side in cs.verge and rng.random() < 0.7:
            for x in np.arange(rng.uniform(0, 8), length, rng.uniform(7, 14)):
                model = m.tree(rng) if cs.verge[side] > 1.5 or rng.random() < 0.5 else m.bush(rng)
                b.add(model, m.VEGETATION, float(x), cs.curb(side, cs.verge[side] / 2), z0=z0)
        if rng.random() < 0.5:
            x0 = float(rng.uniform(0, length - 30))
            for x in np.arange(x0, x0 + float(rng.uniform(10, 30)), float(rng.uniform(1.4, 2.5))):
                b.add(m.bollard(rng), m.MANMADE, float(x), cs.walk(side, 0.3), z0=z0)
        if rng.random() < 0.5:
            for x in np.arange(rng.uniform(0, 20), length, rng.uniform(35, 55)):
                b.add(m.utility_pole(rng), m.MANMADE, float(x), cs.walk(side, cs.sidewalk[side] + 0.4))
