"""Write synthetic worlds as genuine nuScenes-format datasets, plus per-pixel ground truth for every image.

The output loads with the nuScenes devkit and :class:`~ssov_train.data.nuscenes.NuScenesReader` like
v1.0-mini does::

    <root>/v1.0-<name>/{category,attribute,visibility,sensor,calibrated_sensor,ego_pose,log,map,scene,
                        sample,sample_data,instance,sample_annotation,lidarseg}.json, splits.json,
                        lidar_presets.json (which lidar preset drove each scene, and those presets)
    <root>/samples/LIDAR_TOP/<log>__LIDAR_TOP__<timestamp>.pcd.bin    float32 x, y, z, intensity, ring
                                                     (intensity in the scene's preset's range: 0..1, 0..255 ...)
    <root>/samples/CAM_*/<log>__CAM_*__<timestamp>.jpg
    <root>/lidarseg/v1.0-<name>/<lidar sample_data token>_lidarseg.bin    uint8 raw class per point
    <root>/maps/<map token>.png                      semantic prior (road + sidewalks), 0.1 m per pixel
    <root>/ssov_gt/semantic/<CAM>/<image stem>.png   uint8 raw class per pixel (sky 29, ego body 31)
    <root>/ssov_gt/instance/<CAM>/<image stem>.png   uint16 instance per pixel (0 = stuff), one id per object
                                                     and scene, the same in every frame and camera

Everything is written into a hidden sibling directory that is renamed onto ``<root>`` only when complete,
so an interrupted run never leaves a dataset that looks whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from tqdm import tqdm

from ...config import to_dict
from ...errors import ConfigError
from ...geometry.transforms import matrix_to_quat
from ...vocab import load_dictionary
from ..nuscenes import SYNTHETIC_VEHICLE
from .presets import lidar_preset, resolve_presets
from .raycast import PinholeGrid
from .rig import CAMERA_SPECS, CameraSpec
from .sensors import lidar_grid, render_camera, scan_lidar
from .world import SAMPLE_PERIOD_S, Scene, build_scene, scene_name, street_style_named

DEFAULT_WIDTH, DEFAULT_HEIGHT = 800, 450  # half of nuScenes' 1600x900; intrinsics scaled by 0.5
SCENE_START_US = 1_600_000_000_000_000  # scene i starts i hours after this
SCENE_SPACING_US = 3_600_000_000
MAP_RESOLUTION_M = 0.1  # what the devkit assumes for map masks
ATTRIBUTES = ("vehicle.moving", "vehicle.stopped", "vehicle.parked", "cycle.with_rider", "cycle.without_rider",
              "pedestrian.sitting_lying_down", "pedestrian.standing", "pedestrian.moving")
VISIBILITY = (("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100"))
JPEG_QUALITY = 90


@dataclass
class _FrameResult:
    """What the tables need from one rendered keyframe."""

    frame: int
    lidar_time: float  # scene seconds
    camera_times: list[float]  # per CAMERA_SPECS entry
    lidar_points: dict[int, int]  # instance -> lidar points on it
    pixels: dict[int, int]  # instance -> visible pixels over all cameras
    unoccluded_pixels: dict[int, int]  # instance -> pixels it would cover without occluders


class _Tokens:
    """Deterministic tokens: the same world (name, seed) always gets the same ones."""

    def __init__(self, name: str, seed: int):
        self.prefix = f"{name}/{seed}"

    def __call__(self, *key) -> str:
        return hashlib.md5("/".join(map(str, (self.prefix, *key))).encode()).hexdigest()


def _timestamp(scene: Scene, t: float) -> int:
    return SCENE_START_US + scene.index * SCENE_SPACING_US + int(round(t * 1e6))


def _logfile(name: str, seed: int, scene: Scene) -> str:
    return f"{name}-{seed}-{scene.name}"


def _sample_file(channel: str, log: str, timestamp: int) -> str:
    ext = "pcd.bin" if channel == "LIDAR_TOP" else "jpg"
    return f"samples/{channel}/{log}__{channel}__{timestamp}.{ext}"


@lru_cache(maxsize=None)
def _camera_grid(spec: CameraSpec, width: int, height: int) -> PinholeGrid:
    return PinholeGrid(spec.intrinsics(width, height), width, height)


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


@lru_cache(maxsize=1)
def _scene(seed: int, index: int, frames: int, street: str) -> Scene:
    """Scenes are cheap to build and deterministic: each worker process builds its own copy once."""
    return build_scene(seed, index, frames, street)


def _render_frame(seed: int, index: int, frames: int, frame: int, root: Path, name: str,
                  size: tuple[int, int], street: str, lidar: str) -> _FrameResult:
    """Render and write one keyframe: the sweep (by the lidar preset named ``lidar``), its labels, six
    images and their ground truth."""
    scene = _scene(seed, index, frames, street)
    version, tokens, log = f"v1.0-{name}", _Tokens(name, seed), _logfile(name, seed, scene)
    rng = np.random.default_rng([seed, scene.index, frame])
    t_lidar = frame * SAMPLE_PERIOD_S + rng.uniform(-0.003, 0.003)
    preset = lidar_preset(lidar)
    scan = scan_lidar(scene, lidar_grid(preset), t_lidar, rng, preset)
    lidar_file = root / _sample_file("LIDAR_TOP", log, _timestamp(scene, t_lidar))
    lidar_file.parent.mkdir(parents=True, exist_ok=True)
    scan.points.tofile(lidar_file)
    labels_file = root / "lidarseg" / version / f"{tokens('sample_data', scene.index, frame, 'LIDAR_TOP')}_lidarseg.bin"
    labels_file.parent.mkdir(parents=True, exist_ok=True)
    scan.raw_labels.tofile(labels_file)

    camera_times, pixels, unoccluded = [], {}, {}
    for spec in CAMERA_SPECS:
        t_cam = t_lidar + spec.time_offset_s - rng.uniform(0, 0.001)  # never after the sweep
        camera_times.append(t_cam)
        image = render_camera(scene, spec, _camera_grid(spec, *size), t_cam, rng)
        rel = _sample_file(spec.name, log, _timestamp(scene, t_cam))
        stem = Path(rel).name[: -len(".jpg")]
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(root / rel), image.rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            raise OSError(f"could not write {root / rel}")
        _write_png(root / "ssov_gt" / "semantic" / spec.name / f"{stem}.png", image.semantic)
        _write_png(root / "ssov_gt" / "instance" / spec.name / f"{stem}.png", image.instance)
        ids, counts = np.unique(image.instance[image.instance > 0], return_counts=True)
        for i, c in zip(ids.tolist(), counts.tolist()):
            pixels[i] = pixels.get(i, 0) + c
        for i, c in image.unoccluded.items():
            unoccluded[i] = unoccluded.get(i, 0) + c
    ids, counts = np.unique(scan.instances[scan.instances > 0], return_counts=True)
    return _FrameResult(frame, t_lidar, camera_times, dict(zip(ids.tolist(), counts.tolist())), pixels, unoccluded)


def _pose_record(token: str, timestamp: int, pose: np.ndarray) -> dict:
    return {"token": token, "timestamp": timestamp, "rotation": matrix_to_quat(pose[:3, :3]).tolist(),
            "translation": pose[:3, 3].tolist()}


def _quat_yaw(yaw: float) -> list[float]:
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def _link(records: list[dict]) -> list[dict]:
    """Fill prev / next along a time-ordered list of records."""
    for i, r in enumerate(records):
        r["prev"] = records[i - 1]["token"] if i else ""
        r["next"] = records[i + 1]["token"] if i + 1 < len(records) else ""
    return records


def _static_tables(tokens: _Tokens, raw_classes: dict[int, str]) -> dict[str, list[dict]]:
    return {
        "category": [{"token": tokens("category", name), "name": name, "description": f"{name} (synthetic)",
                      "index": index} for index, name in sorted(raw_classes.items())],
        "attribute": [{"token": tokens("attribute", a), "name": a, "description": a} for a in ATTRIBUTES],
        "visibility": [{"token": t, "level": level, "description": f"visibility of whole object is {level[1:]}%"}
                       for t, level in VISIBILITY],
        "sensor": [{"token": tokens("sensor", c), "channel": c, "modality": "lidar" if c == "LIDAR_TOP" else "camera"}
                   for c in ("LIDAR_TOP", *(s.name for s in CAMERA_SPECS))],
    }


def _visibility_token(visible: int, unoccluded: int) -> str:
    """nuScenes visibility level: the share of the object's pixels, over all cameras, that nothing hides."""
    share = visible / unoccluded if unoccluded else 0.0
    for token, upper in (("1", 0.4), ("2", 0.6), ("3", 0.8)):
        if share <= upper:
            return token
    return "4"


def _scene_tables(scene: Scene, results: list[_FrameResult], tokens: _Tokens, log: str, version: str,
                  size: tuple[int, int], raw_classes: dict[int, str], lidar: str) -> dict[str, list[dict]]:
    """All records of one scene (everything but the static tables); ``lidar`` names its lidar preset."""
    s = scene.index
    log_token, map_token = tokens("log", s), tokens("map", s)
    out = {"log": [{"token": log_token, "logfile": log, "vehicle": SYNTHETIC_VEHICLE, "date_captured": "2020-09-13",
                    "location": f"synthetic-{scene.name}"}],
           "map": [{"token": map_token, "log_tokens": [log_token], "category": "semantic_prior",
                    "filename": f"maps/{map_token}.png"}],
           "scene": [{"token": tokens("scene", s), "log_token": log_token, "nbr_samples": len(results),
                      "first_sample_token": tokens("sample", s, results[0].frame),
                      "last_sample_token": tokens("sample", s, results[-1].frame),
                      "name": scene.name, "description": scene.description}]}
    mount = lidar_preset(lidar).mount
    calib = {"LIDAR_TOP": {"token": tokens("calibrated_sensor", s, "LIDAR_TOP"),
                           "sensor_token": tokens("sensor", "LIDAR_TOP"), "translation": list(mount.translation),
                           "rotation": list(mount.rotation), "camera_intrinsic": []}}
    for spec in CAMERA_SPECS:
        calib[spec.name] = {"token": tokens("calibrated_sensor", s, spec.name),
                            "sensor_token": tokens("sensor", spec.name), "translation": list(spec.translation),
                            "rotation": list(spec.rotation), "camera_intrinsic": spec.intrinsics(*size).tolist()}
    out["calibrated_sensor"] = list(calib.values())

    out["sample"], out["ego_pose"], out["lidarseg"] = [], [], []
    sample_data: dict[str, list[dict]] = {channel: [] for channel in calib}
    for r in results:
        sample_token = tokens("sample", s, r.frame)
        out["sample"].append({"token": sample_token, "timestamp": _timestamp(scene, r.lidar_time),
                              "scene_token": tokens("scene", s)})
        for channel, t in (("LIDAR_TOP", r.lidar_time), *zip((c.name for c in CAMERA_SPECS), r.camera_times)):
            token, timestamp = tokens("sample_data", s, r.frame, channel), _timestamp(scene, t)
            camera = channel != "LIDAR_TOP"
            out["ego_pose"].append(_pose_record(token, timestamp, scene.street_to_global @ scene.ego_pose(t)))
            sample_data[channel].append({
                "token": token, "sample_token": sample_token, "ego_pose_token": token,
                "calibrated_sensor_token": calib[channel]["token"], "timestamp": timestamp,
                "fileformat": "jpg" if camera else "pcd", "is_key_frame": True,
                "height": size[1] if camera else 0, "width": size[0] if camera else 0,
                "filename": _sample_file(channel, log, timestamp)})
        lidar_token = tokens("sample_data", s, r.frame, "LIDAR_TOP")
        out["lidarseg"].append({"token": lidar_token, "sample_data_token": lidar_token,
                                "filename": f"lidarseg/{version}/{lidar_token}_lidarseg.bin"})
    _link(out["sample"])
    out["sample_data"] = [record for records in sample_data.values() for record in _link(records)]
    out["instance"], out["sample_annotation"] = _annotations(scene, results, tokens, raw_classes)
    return out


def _annotations(scene: Scene, results: list[_FrameResult], tokens: _Tokens,
                 raw_classes: dict[int, str]) -> tuple[list[dict], list[dict]]:
    """Instance and sample_annotation records: a track per thing, from its first to its last sweep with points."""
    s, to_global = scene.index, scene.street_to_global
    yaw_global = np.arctan2(to_global[1, 0], to_global[0, 0])
    tracks = np.stack([scene.actor_centres(r.lidar_time) @ to_global[:3, :3].T + to_global[:3, 3] for r in results],
                      axis=1)  # (actors, frames, 3) global box centres
    instances, annotations = [], []
    for actor, track in zip(scene.actors, tracks):
        instance = actor.body.instance
        seen = [i for i, r in enumerate(results) if r.lidar_points.get(instance)]
        if not instance or not seen:
            continue
        records = [{"token": tokens("sample_annotation", s, instance, r.frame),
                    "sample_token": tokens("sample", s, r.frame), "instance_token": tokens("instance", s, instance),
                    "visibility_token": _visibility_token(r.pixels.get(instance, 0),
                                                          r.unoccluded_pixels.get(instance, 0)),
                    "attribute_tokens": [tokens("attribute", actor.attribute)] if actor.attribute else [],
                    "translation": track[i].tolist(), "size": [float(v) for v in actor.size[[1, 0, 2]]],
                    "rotation": _quat_yaw(actor.yaw + yaw_global), "num_lidar_pts": r.lidar_points.get(instance, 0),
                    "num_radar_pts": 0}
                   for i, r in enumerate(results) if seen[0] <= i <= seen[-1]]
        annotations += _link(records)
        instances.append({"token": tokens("instance", s, instance),
                          "category_token": tokens("category", raw_classes[actor.body.raw_class]),
                          "nbr_annotations": len(records), "first_annotation_token": records[0]["token"],
                          "last_annotation_token": records[-1]["token"]})
    return instances, annotations


def _write_map(root: Path, scene: Scene, filename: str) -> None:
    """Semantic prior mask (driveable surface and sidewalks) in global coordinates, devkit layout."""
    st = scene.street
    polygons = [np.array([[0, st.sidewalk_right], [scene.length, st.sidewalk_right],
                          [scene.length, st.sidewalk_left], [0, st.sidewalk_left]])]
    polygons += [np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]) for x0, x1, y0, y1 in st.lots]
    glob = [p @ scene.street_to_global[:2, :2].T + scene.street_to_global[:2, 3] for p in polygons]
    extent = np.concatenate(glob).max(0) + 100.0
    width, height = (np.ceil(extent / MAP_RESOLUTION_M)).astype(int)
    mask = np.zeros((height, width), np.uint8)
    pixels = [np.round(np.c_[g[:, 0], extent[1] - g[:, 1]] / MAP_RESOLUTION_M).astype(np.int32) for g in glob]
    cv2.fillPoly(mask, pixels, 255)
    _write_png(root / filename, mask)


def _check(name: str, num_scenes: int, frames_per_scene: int, width: int, height: int,
           splits: dict[str, list[str]], street: str) -> None:
    street_style_named(street)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ConfigError(f"synthetic world name {name!r}: use letters, digits, '-' and '_' only")
    if num_scenes < 1 or frames_per_scene < 1:
        raise ConfigError(f"synthetic world needs >= 1 scene and >= 1 frame, got {num_scenes} x {frames_per_scene}")
    if width < 16 or height < 16:
        raise ConfigError(f"synthetic image size {width}x{height} is too small (>= 16x16)")
    names = [scene_name(i) for i in range(num_scenes)]
    for split, scenes in splits.items():
        if isinstance(scenes, str) or not all(s in names for s in scenes):
            raise ConfigError(f"split {split!r} must list scenes of this world ({names[0]} ... {names[-1]}), "
                              f"got {scenes!r}")


def default_splits(num_scenes: int, lidar_presets: int = 1) -> dict[str, list[str]]:
    """The last fifth of the scenes (at least one, when there are two or more) for validation, the rest train.

    Scenes take the lidar presets in turn, so validation takes at least one scene per preset when there are
    at least two scenes per preset (training keeps one of each).
    """
    val = max(1, round(num_scenes / 5)) if num_scenes > 1 else 0
    if num_scenes >= 2 * lidar_presets:
        val = max(val, lidar_presets)
    names = [scene_name(i) for i in range(num_scenes)]
    return {"train": names[: num_scenes - val], "val": names[num_scenes - val:]}


def generate_world(out_root: str | Path, name: str = "synthetic", num_scenes: int = 2, frames_per_scene: int = 40,
                   seed: int = 0, image_width: Optional[int] = None, image_height: Optional[int] = None,
                   splits: Optional[dict[str, list[str]]] = None, workers: Optional[int] = None,
                   overwrite: bool = False, lidar: Optional[str | list[str]] = None,
                   street: str = "classic") -> Path:
    """Generate a synthetic world as the nuScenes version ``v1.0-<name>`` under ``out_root``; return the root.

    ``splits`` maps split names to scene names, ``scene-0000`` ... (default: :func:`default_splits`), written
    to ``splits.json``; ``workers`` processes render frames in parallel (default: one per CPU).  ``lidar``
    names the lidar presets of config/sensors.yaml ('a,b', a list, or 'all'; default: the default preset):
    scene i is swept by the (i mod n)-th; ``street`` is a street style of :data:`STREET_STYLES`.  Same
    arguments, same bytes, whatever the number of workers.
    """
    width, height = image_width or DEFAULT_WIDTH, image_height or DEFAULT_HEIGHT
    lidars = resolve_presets(lidar)
    splits = default_splits(num_scenes, len(lidars)) if splits is None else dict(splits)
    _check(name, num_scenes, frames_per_scene, width, height, splits, street)
    root = Path(out_root)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise ConfigError(f"{root} already exists and is not empty: choose another output, or replace it with "
                          "--overwrite (ssov-train synth) / overwrite=True (generate_world)")
    version = f"v1.0-{name}"
    tokens = _Tokens(name, seed)
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        raw_classes = load_dictionary("nuscenes").raw_classes  # category "index" = raw lidarseg class
        tables = _static_tables(tokens, raw_classes)
        workers = workers or os.cpu_count() or 1
        with tqdm(total=num_scenes * frames_per_scene, desc=f"synthetic world {version}", unit="frame") as bar, \
                ExitStack() as stack:
            run = map
            if workers > 1:
                pool = stack.enter_context(ProcessPoolExecutor(workers, initializer=_init_worker))
                # on Ctrl-C (or any error) drop the frames not started instead of rendering them all first
                stack.callback(pool.shutdown, wait=False, cancel_futures=True)
                run = pool.map
            for index in range(num_scenes):
                scene = _scene(seed, index, frames_per_scene, street)
                log = _logfile(name, seed, scene)
                scene_lidar = lidars[index % len(lidars)]
                render = partial(_render_frame, seed, index, frames_per_scene, root=tmp, name=name,
                                 size=(width, height), street=street, lidar=scene_lidar)
                results = []
                for result in run(render, range(frames_per_scene)):
                    results.append(result)
                    bar.update()
                for table, records in _scene_tables(scene, results, tokens, log, version, (width, height),
                                                    raw_classes, scene_lidar).items():
                    tables.setdefault(table, []).extend(records)
                _write_map(tmp, scene, f"maps/{tokens('map', index)}.png")
        tables["splits"] = splits
        tables["lidar_presets"] = {  # not a devkit table: which lidar swept each scene, and how
            "street": street,
            "scenes": {scene_name(i): lidars[i % len(lidars)] for i in range(num_scenes)},
            "presets": {n: {**to_dict(lidar_preset(n)), "elevations_deg": lidar_preset(n).elevations.tolist()}
                        for n in lidars}}
        (tmp / version).mkdir()
        for table, records in tables.items():  # plain writes: the whole directory is published at once
            (tmp / version / f"{table}.json").write_text(json.dumps(records))
        _publish(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _init_worker() -> None:
    """Worker initializer: one BLAS thread (several workers' BLAS threads oversubscribe the cores, ~20% slower);
    Ctrl-C is the parent's to handle (it stops the run), not every worker's to print a traceback for."""
    import signal

    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threadpool_limits(1)


def _publish(tmp: Path, root: Path) -> None:
    """Move the finished world onto ``root``, replacing what was there only now that the new one is whole."""
    old = root.parent / f".{root.name}.old-{os.getpid()}"
    if root.exists():
        root.rename(old)
    tmp.rename(root)
    shutil.rmtree(old, ignore_errors=True)
