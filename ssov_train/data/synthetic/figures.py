"""Pictures of each lidar preset's sweep for docs/synthetic_world.md.

``python -m ssov_train.data.synthetic.figures --out docs`` sweeps one street (seed, style and time below)
with every preset of config/sensors.yaml and writes, per preset, a bird's-eye view coloured by class
(``synthetic_<preset>_classes.png``) and one coloured by intensity (``synthetic_<preset>_intensity.png``),
both in the ego frame (x forward, the lidar's own mounting yaw undone).  It prints each sweep's figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ...evaluation.plots import bev_heatmap, bev_labels
from ...vocab import load_dictionary
from .presets import load_presets, lidar_preset
from .sensors import lidar_grid, scan_lidar
from .world import build_scene

SEED, STREET, FRAMES, TIME_S, EXTENT_M = 7, "varied", 20, 4.0, 40.0


def preset_figures(out: Path, name: str, seed: int = SEED, street: str = STREET) -> dict:
    """Write the two pictures of preset ``name``'s sweep; return its figures (points, intensity percentiles)."""
    preset = lidar_preset(name)
    scene = build_scene(seed, 0, FRAMES, street)
    scan = scan_lidar(scene, lidar_grid(preset), TIME_S, np.random.default_rng([seed, 0]), preset)
    to_ego = preset.to_ego
    xyz = scan.points[:, :3].astype(np.float64) @ to_ego[:3, :3].T + to_ego[:3, 3]
    dictionary = load_dictionary("nuscenes")
    bev_labels(xyz, dictionary.map_raw(scan.raw_labels), dictionary.palette, dictionary.class_names,
               out / f"synthetic_{name}_classes.png",
               f"{name}: {preset.beams} beams x {preset.azimuth_steps} firings, {len(xyz):,} points "
               f"({street} street, seed {seed})", extent=EXTENT_M)
    intensity = scan.intensity.astype(np.float64)
    # a raw signal falling with the squared range spans decades: shown on a log scale
    shown, scale = (np.log10(1 + intensity), "log10(1 + intensity)") if preset.intensity.range_exponent >= 2 \
        else (intensity, "intensity")
    low, high = np.percentile(shown, [2, 95])  # the brightest 5% (retro-reflectors) saturate
    bev_heatmap(xyz, shown, out / f"synthetic_{name}_intensity.png",
                f"{name}: intensity ({preset.intensity.output}, {preset.intensity.reflectivity} reflectivity)",
                label=f"{scale} ({preset.intensity.output}; colours span the 2nd-95th percentile)",
                extent=EXTENT_M, vmin=float(low), vmax=float(high))
    return {"points": len(xyz), "rays": preset.beams * preset.azimuth_steps,
            "intensity_p5_50_95": np.percentile(intensity, [5, 50, 95]).round(3).tolist(),
            "intensity_mean": round(float(intensity.mean()), 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs"))
    ap.add_argument("--sensor", default="all", help="preset names, comma separated, or 'all'")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    names = list(load_presets().presets) if args.sensor == "all" else args.sensor.split(",")
    for name in names:
        print(name, preset_figures(args.out, name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
