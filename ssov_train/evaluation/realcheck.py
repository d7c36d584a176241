"""Real-data checks on the shipped nuScenes keyframe (``data/nuscenes_sample``): is a model plausible on real lidar?

The keyframe has no per-point labels, only 69 annotated 3D boxes, so the checks are partial ground truth plus
plain geometry, each defined without looking at any model's output:

* **box accuracy**: the points inside the boxes (:func:`~ssov_train.geometry.boxes.points_in_boxes`) belong to the
  box's class (box category -> raw class -> evaluation class through the one class dictionary); per class, the
  share labelled so;
* **flat share**: among the points lower than ``low_height`` above the ground within ``flat_radius`` horizontally
  (ego frame: nuScenes puts its origin on the ground under the rear axle, x forward), the share labelled with a
  flat class (the dictionary's raw ``flat.*`` group);
* **ego lane**: the low points of the strip the ego vehicle stands on (``lane_half_width`` either side of its
  centre line, ``lane_length`` behind and ahead, outside every box) are road by construction: the ego drove over
  the strip behind it a second ago and stands in its lane facing the strip ahead; the road counts as "mostly
  driveable_surface" when more than half of them are;
* **vehicle share**: the share of the whole cloud labelled with a vehicle class (the raw ``vehicle.*`` group).

Each model runs through the one inference interface (:class:`~ssov_train.inference.Segmenter` on the backend its
file asks for, AFI on as the node runs it) on the scan as recorded and degraded as other sensors deliver it
(:data:`VARIANTS`). One scan says little about a model: do not tune to it (real scans from other sensors are
evaluated outside the project).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import ConfigError
from ..geometry.transforms import apply
from ..vocab import ClassDictionary

# The goals of issue 13 on this keyframe (reported, never optimised for).
CAR_BOX_GOAL = 0.70  # >= this share of the points in car boxes labelled car
EGO_LANE_GOAL = 0.5  # more than this share of the ego lane's low points labelled driveable_surface ("mostly")
VEHICLE_SHARE_GOAL = 0.25  # no cloud more than this share vehicles

NUSCENES_INTENSITY_MAX = 255.0  # nuScenes sweeps store intensity on 0..255
# Returns this close to the sensor (horizontally) are the ego vehicle's roof and the sensor mount: counted in the
# report so that readers know how much of the "whole cloud" they are (the node labels them like any point)
NEAR_SENSOR_RANGE = 2.5


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    intensity: Callable[[np.ndarray], Optional[np.ndarray]]  # recorded intensity -> what the model is given


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("recorded", "intensity as recorded (0..255)", lambda i: i),
    Variant("xyz_only", "no intensity field (XYZ only)", lambda i: None),
    Variant("intensity_0_1", "intensity scaled to 0..1", lambda i: i / np.float32(NUSCENES_INTENSITY_MAX)),
)}


@dataclass(frozen=True)
class CheckGeometry:
    """The regions of the checks, in metres, in the ego frame (origin on the ground, x forward, y left)."""

    low_height: float = 0.3  # "low" points: below this height above the ground
    flat_radius: float = 20.0  # flat share: low points within this horizontal distance of the ego origin
    lane_half_width: float = 1.75  # ego lane: half a 3.5 m lane either side of the ego's centre line
    lane_length: float = 10.0  # ego lane: this far behind and ahead of the ego origin


@dataclass
class ClassGroups:
    """Evaluation-class ids the checks count, from the class dictionary."""

    flat: np.ndarray
    vehicle: np.ndarray
    road: int  # driveable_surface

    @classmethod
    def from_dictionary(cls, dictionary: ClassDictionary) -> "ClassGroups":
        flat, vehicle = dictionary.eval_classes_in_group("flat"), dictionary.eval_classes_in_group("vehicle")
        if not flat or not vehicle or "driveable_surface" not in flat:
            raise ConfigError(f"class dictionary {dictionary.name}: its raw classes do not say which classes are "
                              f"flat (flat.*) and vehicles (vehicle.*) with a driveable_surface: the real-data "
                              f"checks need the nuScenes taxonomy")
        return cls(np.array([dictionary.eval_index(n) for n in flat]),
                   np.array([dictionary.eval_index(n) for n in vehicle]), dictionary.eval_index("driveable_surface"))


# ---- the metrics (pure functions of labels and masks) -----------------------------------------------------------

def share(labels: np.ndarray, where: np.ndarray, classes: Sequence[int]) -> dict:
    """Among the points ``where`` is true: how many, how many labelled one of ``classes``, and their share (None
    when there are no points)."""
    labels = np.asarray(labels)[np.asarray(where, bool)]
    matching = int(np.isin(labels, np.asarray(classes)).sum())
    return {"points": int(labels.size), "matching": matching,
            "share": matching / labels.size if labels.size else None}


def box_accuracy(labels: np.ndarray, box_class: np.ndarray, class_names: Sequence[str], top: int = 3) -> dict:
    """Accuracy of the points inside boxes: ``box_class`` (N,) is the evaluation class of the box holding each
    point (0: in no box, or in a box of no evaluation class). Per box class: points, correct, accuracy and the
    ``top`` most frequent labels given (name -> share); overall: the same pooled over every box point."""
    labels, box_class = np.asarray(labels, np.int64), np.asarray(box_class, np.int64)
    per_class = {}
    for c in np.unique(box_class[box_class > 0]):
        given = labels[box_class == c]
        ids, counts = np.unique(given, return_counts=True)
        order = np.argsort(-counts, kind="stable")[:top]
        correct = int((given == c).sum())
        per_class[class_names[c]] = {
            "points": int(given.size), "correct": correct, "accuracy": correct / given.size,
            "labelled_as": {class_names[ids[i]]: int(counts[i]) / given.size for i in order}}
    scored = box_class > 0
    n, correct = int(scored.sum()), int((labels[scored] == box_class[scored]).sum())
    return {"points": n, "correct": correct, "accuracy": correct / n if n else None, "per_class": per_class}


def low_points(ego_xyz: np.ndarray, geometry: CheckGeometry) -> np.ndarray:
    """Points lower than ``low_height`` above the ground within ``flat_radius`` horizontally (ego frame)."""
    xyz = np.asarray(ego_xyz, np.float64)
    return (xyz[:, 2] < geometry.low_height) & (np.hypot(xyz[:, 0], xyz[:, 1]) <= geometry.flat_radius)


def ego_lane_points(ego_xyz: np.ndarray, in_box: np.ndarray, geometry: CheckGeometry) -> np.ndarray:
    """Low points of the ego's own lane: |y| <= lane_half_width, |x| <= lane_length, below low_height, in no box."""
    xyz = np.asarray(ego_xyz, np.float64)
    return ((xyz[:, 2] < geometry.low_height) & (np.abs(xyz[:, 1]) <= geometry.lane_half_width)
            & (np.abs(xyz[:, 0]) <= geometry.lane_length) & ~np.asarray(in_box, bool))


# ---- the scan ---------------------------------------------------------------------------------------------------

@dataclass
class RealScan:
    """One real scan with what the checks need, all per point except the boxes."""

    name: str
    xyz: np.ndarray  # (N, 3) sensor frame, what the model is given
    intensity: np.ndarray  # (N,) as recorded
    ego_xyz: np.ndarray  # (N, 3) ego frame (origin on the ground, x forward)
    box_index: np.ndarray  # (N,) index of the box holding the point, -1 for none
    box_class: np.ndarray  # (N,) evaluation class of that box, 0 for none (or a box of no evaluation class)
    boxes: np.ndarray  # (B, 7) sensor frame
    lidar_to_ego: np.ndarray  # (4, 4)

    @classmethod
    def from_sample(cls, root: str | Path, dictionary: ClassDictionary) -> "RealScan":
        """The keyframe of a single-sample folder (``data/nuscenes_sample`` layout)."""
        from ..data.sample import SampleReader
        from ..geometry.boxes import points_in_boxes

        reader = SampleReader(root, dictionary)
        frame = reader.load(reader.token)
        xyz = np.asarray(frame.points, np.float32)
        box_index = points_in_boxes(xyz, frame.boxes)
        box_class = np.zeros(len(xyz), np.int64)
        inside = box_index >= 0
        box_class[inside] = dictionary.map_raw(frame.box_raw_classes[box_index[inside]])
        t = np.asarray(frame.lidar_to_ego, np.float64)
        ego = apply(t, xyz)
        return cls(f"nuScenes {frame.scene} keyframe {frame.token}", xyz, np.asarray(frame.intensity, np.float32),
                   ego, box_index, box_class, np.asarray(frame.boxes, np.float64), t)


def check_labels(labels: np.ndarray, scan: RealScan, groups: ClassGroups, class_names: Sequence[str],
                 geometry: CheckGeometry = CheckGeometry()) -> dict:
    """Every check of one labelling of ``scan``."""
    labels = np.asarray(labels, np.int64)
    boxes = box_accuracy(labels, scan.box_class, class_names)
    car = boxes["per_class"].get("car")
    lane = share(labels, ego_lane_points(scan.ego_xyz, scan.box_index >= 0, geometry), [groups.road])
    vehicles = share(labels, np.ones(len(labels), bool), groups.vehicle)
    ids, counts = np.unique(labels, return_counts=True)
    return {
        "box_points": boxes,
        "car_box_car_share": car["accuracy"] if car else None,
        "low_points_flat": share(labels, low_points(scan.ego_xyz, geometry), groups.flat),
        "ego_lane_driveable": lane,
        "road_mostly_driveable": None if lane["share"] is None else lane["share"] > EGO_LANE_GOAL,
        "vehicles": vehicles,
        "label_shares": {class_names[i]: int(n) / len(labels) for i, n in sorted(zip(ids, counts), key=lambda x: -x[1])},
    }


def goals(metrics: dict) -> dict:
    """The issue's goals on this keyframe: value, target and whether it is met (None: not measurable)."""
    car, lane, veh = metrics["car_box_car_share"], metrics["ego_lane_driveable"]["share"], metrics["vehicles"]["share"]
    return {
        "car_box_car_share": {"value": car, "target": f">= {CAR_BOX_GOAL:g}",
                              "met": None if car is None else car >= CAR_BOX_GOAL},
        "ego_lane_driveable": {"value": lane, "target": f"> {EGO_LANE_GOAL:g}",
                               "met": None if lane is None else lane > EGO_LANE_GOAL},
        "vehicle_share": {"value": veh, "target": f"<= {VEHICLE_SHARE_GOAL:g}", "met": veh <= VEHICLE_SHARE_GOAL},
    }


# ---- the command ------------------------------------------------------------------------------------------------

def parse_model_argument(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (named by its file name without the suffix)."""
    name, sep, path = text.partition("=")
    if sep and name and "/" not in name and not Path(text).exists():
        return name, Path(path)
    return Path(text).stem, Path(text)


def run_realcheck(models: Sequence[tuple[str, Path]], out: str | Path, data: str | Path,
                  variants: Sequence[str] = tuple(VARIANTS), backend: str = "auto", afi: bool = True,
                  geometry: CheckGeometry = CheckGeometry(), figures: bool = True) -> dict:
    """Run the checks for every model and input variant; write ``realcheck.json``, ``realcheck.md`` and (with
    ``figures``) ``bev_labels.png`` and ``box_accuracy.png`` under ``out``. Returns the JSON document."""
    from ..afi import AFIConfig
    from ..inference import Segmenter, open_backend
    from ..io import write_json_atomic, write_text_atomic
    from ..vocab import load_dictionary

    if not models:
        raise ConfigError("realcheck: give at least one --model")
    names = [n for n, _ in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"realcheck: model names must differ, got {names} (name them: --model NAME=PATH)")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"realcheck: unknown input variant(s) {unknown}; known: {list(VARIANTS)}")
    dictionary = load_dictionary("nuscenes")
    groups = ClassGroups.from_dictionary(dictionary)
    scan = RealScan.from_sample(data, dictionary)
    out = Path(out)
    results, labels_by_model = [], {}
    for name, path in models:
        net = open_backend(path, backend)
        try:
            spec = net.spec
            if not spec.has_classes or tuple(spec.class_names) != tuple(dictionary.class_names):
                raise ConfigError(f"realcheck: model {path} predicts {list(spec.class_names)}, not the evaluation "
                                  f"classes of the {dictionary.name} dictionary the boxes are labelled with")
            segmenter = Segmenter(net, afi=AFIConfig() if afi else None)
            entry = {"name": name, "path": str(path), "backend": net.describe(), "input_fields": list(spec.input_fields),
                     "afi": afi, "variants": {}}
            for v in variants:
                segmenter.reset()
                t = time.perf_counter()
                seg = segmenter.segment(scan.xyz, VARIANTS[v].intensity(scan.intensity))
                metrics = check_labels(seg.labels, scan, groups, dictionary.class_names, geometry)
                metrics["goals"] = goals(metrics)
                metrics["seconds"] = time.perf_counter() - t
                entry["variants"][v] = metrics
                labels_by_model[(name, v)] = seg.labels
        finally:
            net.close()
        results.append(entry)

    doc = {
        "scan": {"name": scan.name, "data": str(data), "points": len(scan.xyz), "boxes": len(scan.boxes),
                 "points_in_boxes": int((scan.box_index >= 0).sum()), "box_points": int((scan.box_class > 0).sum()),
                 "near_sensor_points": int((np.hypot(scan.xyz[:, 0], scan.xyz[:, 1]) < NEAR_SENSOR_RANGE).sum()),
                 "low_points": int(low_points(scan.ego_xyz, geometry).sum()),
                 "ego_lane_points": int(ego_lane_points(scan.ego_xyz, scan.box_index >= 0, geometry).sum())},
        "definitions": {**asdict(geometry), "frame": "ego (origin on the ground under the rear axle, x forward, y left)",
                        "flat_classes": [dictionary.class_names[i] for i in groups.flat],
                        "vehicle_classes": [dictionary.class_names[i] for i in groups.vehicle],
                        "variants": {v: VARIANTS[v].description for v in variants},
                        "afi": "on, the node's default settings, one frame" if afi else "off"},
        "models": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "realcheck.json", doc)
    write_text_atomic(out / "realcheck.md", markdown_tables(doc))
    if figures:
        from .plots import bev_label_grid, grouped_share_bars

        doc_files = {"json": str(out / "realcheck.json"), "markdown": str(out / "realcheck.md")}
        panels = {(name, v): labels_by_model[(name, v)] for name, v in labels_by_model}
        doc_files["bev"] = str(bev_label_grid(
            scan.ego_xyz, panels, dictionary.palette, dictionary.class_names, out / "bev_labels.png",
            title=f"{scan.name}: labels per model (rows) and input (columns), ego frame",
            boxes=_boxes_in_ego(scan), lane=(geometry.lane_length, geometry.lane_half_width),
            radius=geometry.flat_radius, notes={(m["name"], v): _panel_note(r) for m in results
                                                for v, r in m["variants"].items()}))
        box_classes = sorted({c for m in results for r in m["variants"].values() for c in r["box_points"]["per_class"]},
                             key=dictionary.class_names.index)
        points = {c: next(r["box_points"]["per_class"][c]["points"] for m in results for r in m["variants"].values()
                          if c in r["box_points"]["per_class"]) for c in box_classes}
        series = {(m["name"], v): [r["box_points"]["per_class"].get(c, {}).get("accuracy", np.nan)
                                         for c in box_classes] for m in results for v, r in m["variants"].items()}
        doc_files["box_accuracy"] = str(grouped_share_bars(
            series, [f"{c} ({points[c]} points)" for c in box_classes], out / "box_accuracy.png",
            title=f"{scan.name}: points inside the {len(scan.boxes)} annotated boxes labelled with their box's class",
            ylabel="share of the class's box points (%)",
            goal=(box_classes.index("car"), CAR_BOX_GOAL) if "car" in box_classes else None))
        doc["files"] = doc_files
        write_json_atomic(out / "realcheck.json", doc)
    return doc


def _boxes_in_ego(scan: RealScan) -> list[np.ndarray]:
    """(4, 2) ground footprints of the boxes in the ego frame."""
    from ..geometry.boxes import box_corners

    t = scan.lidar_to_ego
    footprints = []
    for box in scan.boxes:
        corners = apply(t, box_corners(box))
        footprints.append(corners[[0, 2, 6, 4], :2])  # the corners at -dz/2 in order around the box
    return footprints


def _panel_note(r: dict) -> str:
    return (f"car boxes {_pct(r['car_box_car_share'], 0)} car, ego lane {_pct(r['ego_lane_driveable']['share'], 0)} "
            f"road, vehicles {_pct(r['vehicles']['share'], 0)}")


def _pct(value: Optional[float], decimals: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{decimals}f}%"


def _mark(met: Optional[bool]) -> str:
    return "" if met is None else (" ✓" if met else " ✗")


def summary_rows(doc: dict) -> tuple[list[str], list[list[str]]]:
    """The main table: one row per model and input variant."""
    header = ["model", "input", "box points correct", "car boxes: car", "low points flat",
              "ego lane: driveable_surface", "vehicles (whole cloud)", "largest classes"]
    rows = []
    for m in doc["models"]:
        for v, r in m["variants"].items():
            g = r["goals"]
            rows.append([m["name"], v, _pct(r["box_points"]["accuracy"]),
                         _pct(r["car_box_car_share"]) + _mark(g["car_box_car_share"]["met"]),
                         _pct(r["low_points_flat"]["share"]),
                         _pct(r["ego_lane_driveable"]["share"]) + _mark(g["ego_lane_driveable"]["met"]),
                         _pct(r["vehicles"]["share"]) + _mark(g["vehicle_share"]["met"]),
                         ", ".join(f"{c} {_pct(x, 0)}" for c, x in list(r["label_shares"].items())[:3])])
    return header, rows


def box_class_rows(doc: dict) -> tuple[list[str], list[list[str]]]:
    """Per box class: its points, then the accuracy per model and input variant."""
    columns = [(m, v) for m in doc["models"] for v in m["variants"]]
    header = ["box class", "points", *(f"{m['name']} · {v}" for m, v in columns)]
    classes: dict[str, int] = {}
    for m, v in columns:
        for c, r in m["variants"][v]["box_points"]["per_class"].items():
            classes[c] = r["points"]
    rows = []
    for c, n in classes.items():
        cells = []
        for m, v in columns:
            r = m["variants"][v]["box_points"]["per_class"].get(c)
            cells.append("n/a" if r is None else f"{_pct(r['accuracy'])} ({next(iter(r['labelled_as']))})")
        rows.append([c, str(n), *cells])
    return header, rows


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _plain(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths)), *(fmt.format(*r) for r in rows)])


def markdown_tables(doc: dict) -> str:
    """The two tables as markdown (docs/real_data_checks.md quotes them)."""
    s = doc["scan"]
    return (f"{s['name']}: {s['points']:,} points, {s['boxes']} boxes holding {s['box_points']:,} points of an "
            f"evaluation class, {s['near_sensor_points']:,} within {NEAR_SENSOR_RANGE:g} m of the sensor (ego roof, "
            f"sensor mount), {s['low_points']:,} low points, {s['ego_lane_points']:,} in the ego lane.\n\n"
            + _markdown(*summary_rows(doc)) + "\nPer box class (most frequent label given in brackets):\n\n"
            + _markdown(*box_class_rows(doc)))


def text_report(doc: dict) -> str:
    """The two tables as plain text for the terminal."""
    return _plain(*summary_rows(doc)) + "\n\n" + _plain(*box_class_rows(doc))
