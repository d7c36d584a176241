"""PNG figures: per-class IoU bars and camera overlays of projected points."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io import atomic_path  # noqa: E402


def _save(fig, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def iou_bar_chart(series: dict[str, Sequence[float]], class_names: Sequence[str], palette: np.ndarray,
                  path: str | Path, title: str) -> Path:
    """Grouped bars of per-class IoU (in %), one group per class, one bar per series; mIoU in the legend."""
    n_cls, n_ser = len(class_names), len(series)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.62 * n_cls * max(1, n_ser) ** 0.5), 4.6))
    width = 0.8 / max(n_ser, 1)
    hatches = ["", "//", "..", "xx"]
    for s, (label, values) in enumerate(series.items()):
        vals = np.asarray(values, dtype=np.float64) * 100
        x = np.arange(n_cls) + (s - (n_ser - 1) / 2) * width
        colors = palette[1:1 + n_cls] / 255.0
        ax.bar(x, np.nan_to_num(vals), width, color=colors, edgecolor="black", linewidth=0.5,
               hatch=hatches[s % len(hatches)], label=f"{label}: mIoU {np.nanmean(vals):.1f}")
        for xi, v in zip(x, vals):
            ax.text(xi, (0 if np.isnan(v) else v) + 1, "n/a" if np.isnan(v) else f"{v:.0f}",
                    ha="center", va="bottom", fontsize=6.5, rotation=90 if n_ser > 1 else 0)
    ax.set_xticks(np.arange(n_cls))
    ax.set_xticklabels(class_names, rotation=40, ha="right", fontsize=8)
    ax.set_ylim(0, 110)
    ax.set_ylabel("IoU (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper right", framealpha=0.9)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def camera_overlay_grid(images: Sequence[np.ndarray], titles: Sequence[str], points_uv: Sequence[np.ndarray],
                        colors: Sequence[np.ndarray], path: str | Path, suptitle: str = "",
                        legend: dict[str, np.ndarray] | None = None, point_size: float = 1.2,
                        sizes: Sequence[np.ndarray] | None = None) -> Path:
    """Six (or any number of) images in a grid of 3 columns with projected points drawn over them.

    ``colors`` are (M, 3) uint8 per point, ``sizes`` optional (M,) marker sizes; ``legend`` maps a label to
    an RGB uint8 colour.
    """
    n = len(images)
    cols = 3 if n > 1 else 1
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.0 * rows + (0.6 if legend else 0)))
    axes = np.atleast_1d(axes).ravel()
    for ax in axes[n:]:
        ax.axis("off")
    for i, (ax, img, title, uv, col) in enumerate(zip(axes, images, titles, points_uv, colors)):
        ax.imshow(img)
        if len(uv):
            size = point_size if sizes is None else sizes[i]
            ax.scatter(uv[:, 0], uv[:, 1], s=size, c=np.asarray(col) / 255.0, linewidths=0)
        ax.set_title(title, fontsize=9)
        ax.set_xlim(0, img.shape[1])
        ax.set_ylim(img.shape[0], 0)
        ax.axis("off")
    if legend:
        handles = [plt.Line2D([], [], marker="o", ls="", color=np.asarray(c) / 255.0, label=k) for k, c in legend.items()]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 9), fontsize=8, frameon=False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout(rect=(0, 0.05 if legend else 0, 1, 0.97 if suptitle else 1))
    return _save(fig, path, dpi=80)


def depth_colors(depth: np.ndarray, max_depth: float = 50.0) -> np.ndarray:
    """Turbo colour map of depth, (M, 3) uint8."""
    cmap = plt.get_cmap("turbo")
    return (cmap(np.clip(depth / max_depth, 0, 1))[:, :3] * 255).astype(np.uint8)
