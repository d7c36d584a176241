"""PNG figures: per-class IoU bars and camera overlays of projected points."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Circle, Patch, Polygon, Rectangle  # noqa: E402
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
    legend_handles = []
    for s, (label, values) in enumerate(series.items()):
        vals = np.asarray(values, dtype=np.float64) * 100
        x = np.arange(n_cls) + (s - (n_ser - 1) / 2) * width
        colors = palette[1:1 + n_cls] / 255.0
        ax.bar(x, np.nan_to_num(vals), width, color=colors, edgecolor="black", linewidth=0.5,
               hatch=hatches[s % len(hatches)])
        # Legend swatches in neutral grey: the bars' colours belong to the classes, not the series.
        legend_handles.append(Patch(facecolor="0.85", edgecolor="black", hatch=hatches[s % len(hatches)],
                                    label=f"{label}: mIoU {np.nanmean(vals):.1f}"))
        for xi, v in zip(x, vals):
            ax.text(xi, (0 if np.isnan(v) else v) + 1, "n/a" if np.isnan(v) else f"{v:.0f}",
                    ha="center", va="bottom", fontsize=6.5, rotation=90 if n_ser > 1 else 0)
    ax.set_xticks(np.arange(n_cls))
    ax.set_xticklabels(class_names, rotation=40, ha="right", fontsize=8)
    ax.set_ylim(0, 110)
    ax.set_ylabel("IoU (%)")
    ax.set_title(title, fontsize=10, pad=10 + 13 * ((n_ser + 1) // 2))  # room for the legend below it
    # Above the axes, so it never hides bars.
    ax.legend(handles=legend_handles, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.01),
              ncol=min(n_ser, 2), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


class ColorScale(NamedTuple):
    """A continuous colour scale: what a colour bar shows (matplotlib colour map, value range, label)."""

    cmap: str
    vmin: float
    vmax: float
    label: str


# Depth of projected points: 0..50 m, farther points take the 50 m colour.
DEPTH_SCALE = ColorScale("turbo", 0.0, 50.0, "depth (m; 50 m and beyond: the last colour)")
# Legend swatches and markers get this outline, so pale palette colours (manmade: lavender) show on white.
SWATCH_EDGE = "#555555"


def legend_handles(legend: dict[str, np.ndarray], marker: str = "s") -> list:
    """Legend entries for ``{label: RGB uint8}``: square swatches with a grey outline (pale colours stay visible
    on the white figure background)."""
    return [plt.Line2D([], [], marker=marker, ls="", markersize=8, color=np.asarray(c, dtype=np.float64) / 255.0,
                       markeredgecolor=SWATCH_EDGE, label=k) for k, c in legend.items()]


def camera_overlay_grid(images: Sequence[np.ndarray], titles: Sequence[str], points_uv: Sequence[np.ndarray],
                        colors: Sequence[np.ndarray], path: str | Path, suptitle: str = "",
                        legend: dict[str, np.ndarray] | None = None, point_size: float = 1.2,
                        sizes: Sequence[np.ndarray] | None = None, colorbar: Optional[ColorScale] = None) -> Path:
    """Six (or any number of) images in a grid of 3 columns with projected points drawn over them.

    ``colors`` are (M, 3) uint8 per point, ``sizes`` optional (M,) marker sizes; ``legend`` maps a label to
    an RGB uint8 colour (class colours); ``colorbar`` adds a horizontal colour bar below the grid (colours
    that encode a value, such as :data:`DEPTH_SCALE`).
    """
    n = len(images)
    cols = 3 if n > 1 else 1
    rows = int(np.ceil(n / cols))
    below = 0.6 if (legend or colorbar) else 0
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.0 * rows + below))
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
        handles = legend_handles(legend)
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 9), fontsize=8, frameon=False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    bottom = 0.05 if legend else (0.09 if colorbar else 0)
    fig.tight_layout(rect=(0, bottom, 1, 0.97 if suptitle else 1))
    if colorbar:
        bar_ax = fig.add_axes((0.3, 0.03, 0.4, 0.018))
        mappable = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(colorbar.vmin, colorbar.vmax),
                                                plt.get_cmap(colorbar.cmap))
        fig.colorbar(mappable, cax=bar_ax, orientation="horizontal").set_label(colorbar.label, fontsize=9)
    return _save(fig, path, dpi=80)


def scale_colors(values: np.ndarray, scale: ColorScale) -> np.ndarray:
    """(M, 3) uint8 colours of ``values`` on ``scale`` (values outside its range take the end colours)."""
    t = np.clip((np.asarray(values, dtype=np.float64) - scale.vmin) / (scale.vmax - scale.vmin), 0, 1)
    return (plt.get_cmap(scale.cmap)(t)[:, :3] * 255).astype(np.uint8)


def depth_colors(depth: np.ndarray) -> np.ndarray:
    """Colours of point depths on :data:`DEPTH_SCALE`, (M, 3) uint8."""
    return scale_colors(depth, DEPTH_SCALE)


def image_with_legend(image: np.ndarray, legend: dict[str, np.ndarray], path: str | Path) -> Path:
    """An RGB uint8 image (a camera overlay the node published) written as PNG, pixel for pixel, with a white
    strip below it holding the legend of its class colours."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    height, width = image.shape[:2]
    handles = legend_handles(legend)
    ncol = max(1, min(len(handles), width // 170))
    strip = 30 * int(np.ceil(len(handles) / ncol)) + 10  # pixels
    dpi = 100
    fig = matplotlib.figure.Figure(figsize=(width / dpi, strip / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    if handles:
        fig.legend(handles=handles, loc="center", ncol=ncol, fontsize=10, frameon=False)
    canvas.draw()
    legend_rgb = np.asarray(canvas.buffer_rgba())[:strip, :width, :3]
    pad = width - legend_rgb.shape[1]  # Agg rounds the canvas size: pad to the image's width with white
    legend_rgb = np.pad(legend_rgb, ((0, 0), (0, pad), (0, 0)), constant_values=255)
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.concatenate([np.asarray(image, np.uint8)[:, :, :3], legend_rgb], 0)).save(tmp, "PNG")
    return path


def confusion_heatmap(cm: np.ndarray, class_names: Sequence[str], path: str | Path, title: str,
                      normalize: str | None = "row", ignore_index: int | None = 0) -> Path:
    """Confusion matrix (rows ground truth, columns prediction) as a heat map, in % when normalised.

    ``normalize``: ``'row'`` (share of each ground-truth class), ``'col'`` (share of each predicted class)
    or ``None`` (raw counts).  The row of ``ignore_index`` (zeroed by the protocol) is not drawn, and its
    column only when some labelled point was predicted as it.  Rows without points are left blank; cells
    are annotated while the matrix is small enough to read them.
    """
    if normalize not in ("row", "col", None):
        raise ValueError(f"normalize must be 'row', 'col' or None, got {normalize!r}")
    cm = np.asarray(cm, dtype=np.float64)
    k = len(class_names)
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix {cm.shape} does not match {k} class names")
    rows = [i for i in range(k) if i != ignore_index]
    cols = [i for i in range(k) if i != ignore_index or cm[:, i].sum() > 0]
    support_rows, support_cols = cm.sum(1), cm.sum(0)  # over all columns / rows, shown or not
    sub = cm[np.ix_(rows, cols)]
    if normalize == "row":
        with np.errstate(invalid="ignore", divide="ignore"):
            values = 100 * sub / support_rows[rows, None]
    elif normalize == "col":
        with np.errstate(invalid="ignore", divide="ignore"):
            values = 100 * sub / support_cols[None, cols]
    else:
        values = sub.copy()
    values[support_rows[rows] == 0] = np.nan  # no ground truth: blank row

    cell = 0.42 if len(cols) <= 20 else 0.3
    fig, ax = plt.subplots(figsize=(2.8 + cell * len(cols), 1.8 + cell * len(rows)))
    cmap = plt.get_cmap("Blues").with_extremes(bad="#eeeeee")
    vmax = 100.0 if normalize else max(float(np.nanmax(values)) if np.isfinite(values).any() else 1.0, 1.0)
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=vmax, aspect="equal")
    if len(cols) <= 24:
        font = 7 if len(cols) <= 17 else 5.5
        for r in range(len(rows)):
            for c in range(len(cols)):
                v = values[r, c]
                if np.isnan(v) or (normalize and v < 0.5) or (not normalize and v == 0):
                    continue
                text = (f"{v:.0f}" if v >= 9.5 else f"{v:.1f}") if normalize else _short_count(v)
                weight = "bold" if rows[r] == cols[c] else "normal"
                ax.text(c, r, text, ha="center", va="center", fontsize=font, fontweight=weight,
                        color="white" if v > 0.55 * vmax else "black")
    row_labels = [f"{class_names[i]} ({_short_count(support_rows[i])})" for i in rows]
    ax.set_yticks(np.arange(len(rows)))
    ax.set_yticklabels(row_labels, fontsize=8)
    ax.set_xticks(np.arange(len(cols)))
    ax.set_xticklabels([class_names[i] for i in cols], rotation=50, ha="right", fontsize=8)
    ax.set_ylabel("ground truth (points)")
    ax.set_xlabel("prediction")
    ax.set_xticks(np.arange(len(cols) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(rows) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=0.6)
    ax.tick_params(which="minor", length=0)
    unit = {"row": "% of ground-truth row", "col": "% of predicted column", None: "points"}[normalize]
    fig.colorbar(im, ax=ax, fraction=0.035, pad=0.02).set_label(unit, fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def _short_count(n: float) -> str:
    n = float(n)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.0f}"


_BEV_BACKGROUND = "#4a4e57"  # mid-dark: both near-white (manmade) and dark (sidewalk) palette colours show
# The error panel: blue = correct, red = wrong (a pair colour-blind readers tell apart), and points without
# ground truth faint grey, as in every panel.
_CORRECT = np.array([0.35, 0.7, 1.0])
_ERROR = np.array([0.95, 0.1, 0.1])
_NO_GROUND_TRUTH = "#d0d0d0"


def _bev_frame(ax, extent: float, ylabel: bool = True) -> None:
    """The sensor marker, square limits, axis labels and grid shared by the bird's-eye views."""
    ax.plot(0, 0, marker="^", color="white", markeredgecolor="black", markersize=8, zorder=5)
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    if ylabel:
        ax.set_ylabel("y (m)")
    ax.grid(color="white", alpha=0.12, linewidth=0.5)


def bev_comparison(points: np.ndarray, gt: np.ndarray, pred: np.ndarray, palette: np.ndarray,
                   class_names: Sequence[str], path: str | Path, title: str, extent: float = 50.0) -> Path:
    """Bird's-eye view of one scan: ground truth, prediction, and errors (gt != pred, gt > 0) in red.

    ``points`` (N, 3+) in the sensor frame (ego at the centre, axes in metres, ``extent`` metres each
    way); ``palette`` (C, 3) uint8 indexed by label and ``class_names`` by label (index 0 = ignore).
    Points with ground truth 0 are drawn faintly in every panel; the legend lists the classes present.
    """
    xy = np.asarray(points, dtype=np.float64)[:, :2]
    gt = np.asarray(gt, dtype=np.int64).ravel()
    pred = np.asarray(pred, dtype=np.int64).ravel()
    if not len(xy) == len(gt) == len(pred):
        raise ValueError(f"{len(xy)} points, {len(gt)} ground-truth and {len(pred)} predicted labels")
    pal = np.asarray(palette, dtype=np.float64) / 255.0
    inside = (np.abs(xy) <= extent).all(1)
    xy, gt, pred = xy[inside], gt[inside], pred[inside]
    labelled = gt > 0
    wrong = labelled & (gt != pred)
    size = float(np.clip(15000.0 / max(len(xy), 1), 0.3, 4.0)) * (50.0 / extent) ** 0.5

    fig, axes = plt.subplots(1, 3, figsize=(17.5, 6.6), sharex=True, sharey=True)
    n_lab = int(labelled.sum())
    err_title = f"errors: {int(wrong.sum())} of {n_lab} labelled points ({100 * wrong.sum() / max(n_lab, 1):.1f}%)"
    panels = [("ground truth", pal[gt]), ("prediction", pal[pred]), (err_title, np.where(wrong[:, None], _ERROR, _CORRECT))]
    for ax, (name, colors) in zip(axes, panels):
        ax.set_facecolor(_BEV_BACKGROUND)
        ax.scatter(xy[~labelled, 0], xy[~labelled, 1], s=size, c=_NO_GROUND_TRUTH, alpha=0.18, linewidths=0,
                   rasterized=True)
        order, sizes = np.flatnonzero(labelled), size
        if name == err_title:  # errors on top of correct points, and larger
            order = order[np.argsort(wrong[order], kind="stable")]
            sizes = np.where(wrong[order], 2.5 * size, size)
        ax.scatter(xy[order, 0], xy[order, 1], s=sizes, c=colors[order], linewidths=0, rasterized=True)
        _bev_frame(ax, extent, ylabel=False)
        ax.set_title(name, fontsize=10)
    axes[0].set_ylabel("y (m)")

    present = np.union1d(np.unique(gt[labelled]), np.unique(pred[labelled]))
    handles = legend_handles({class_names[c]: palette[c] for c in present})
    handles += [plt.Line2D([], [], marker="s", ls="", markersize=8, color=(0.82, 0.82, 0.82, 0.35),
                           markeredgecolor=SWATCH_EDGE, label=f"{class_names[0]} (no ground truth)")]
    # The error panel's colours are not classes: their own legend, inside that panel.
    axes[2].legend(handles=[plt.Line2D([], [], marker="s", ls="", markersize=8, color=c, markeredgecolor=SWATCH_EDGE,
                                       label=lab) for c, lab in ((_CORRECT, "correct"), (_ERROR, "error"))],
                   loc="upper right", fontsize=8.5, framealpha=0.85)
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8.5, frameon=False)
    fig.suptitle(title, fontsize=11)
    rows = int(np.ceil(len(handles) / 8))
    fig.tight_layout(rect=(0, 0.05 + 0.035 * rows, 1, 0.96))
    fig.subplots_adjust(wspace=0.12)
    return _save(fig, path, dpi=90)


def bev_labels(points: np.ndarray, labels: np.ndarray, palette: np.ndarray, class_names: Sequence[str],
               path: str | Path, title: str, extent: float = 50.0) -> Path:
    """Bird's-eye view of one labelled scan, coloured by label, with a legend of the classes present (and their
    point counts). ``points`` (N, 3+) in the sensor frame; ``palette`` (C, 3) uint8 and ``class_names`` indexed
    by label (0 = unlabelled, drawn faintly)."""
    xy = np.asarray(points, dtype=np.float64)[:, :2]
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if len(xy) != len(labels):
        raise ValueError(f"{len(xy)} points but {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= len(palette) or labels.max() >= len(class_names)):
        raise ValueError(f"labels span {labels.min()}..{labels.max()}, palette has {len(palette)} and "
                         f"class_names {len(class_names)} entries")
    pal = np.asarray(palette, dtype=np.float64) / 255.0
    inside = (np.abs(xy) <= extent).all(1)
    xy, labels = xy[inside], labels[inside]
    size = float(np.clip(15000.0 / max(len(xy), 1), 0.3, 4.0)) * (50.0 / extent) ** 0.5
    fig, ax = plt.subplots(figsize=(8.2, 8.6))
    ax.set_facecolor(_BEV_BACKGROUND)
    unl = labels == 0
    ax.scatter(xy[unl, 0], xy[unl, 1], s=size, c="#d0d0d0", alpha=0.18, linewidths=0, rasterized=True)
    ax.scatter(xy[~unl, 0], xy[~unl, 1], s=size, c=pal[labels[~unl]], linewidths=0, rasterized=True)
    _bev_frame(ax, extent)
    ids, counts = np.unique(labels, return_counts=True)
    handles = [plt.Line2D([], [], marker="s", ls="", markersize=8, color=pal[c] if c else (0.82, 0.82, 0.82),
                          markeredgecolor=SWATCH_EDGE, label=f"{class_names[c]} ({_short_count(n)})")
               for c, n in sorted(zip(ids.tolist(), counts.tolist()), key=lambda cn: -cn[1])]
    ncol = min(len(handles), 4) or 1
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8.5, frameon=False)
    ax.set_title(title, fontsize=10.5)
    rows = int(np.ceil(len(handles) / ncol))
    fig.tight_layout(rect=(0, 0.03 + 0.03 * rows, 1, 1))
    return _save(fig, path, dpi=90)



def bev_label_grid(points: np.ndarray, panels: dict[tuple[str, str], np.ndarray], palette: np.ndarray,
                   class_names: Sequence[str], path: str | Path, title: str, extent: float = 40.0,
                   boxes: Sequence[np.ndarray] = (), lane: tuple[float, float] | None = None,
                   radius: float | None = None, notes: dict[tuple[str, str], str] | None = None) -> Path:
    """Bird's-eye views of one scan labelled several ways, side by side: ``panels`` maps (row, column) names
    (model, input) to (N,) labels of ``points`` (N, 3+), x forward drawn to the right. ``boxes``: (4, 2) ground
    footprints drawn as white outlines; ``lane`` (half length, half width): a dashed rectangle at the origin;
    ``radius``: a dotted circle; ``notes``: a second title line per panel. One legend: the classes any panel uses."""
    rows = list(dict.fromkeys(r for r, _ in panels))
    cols = list(dict.fromkeys(c for _, c in panels))
    xy = np.asarray(points, dtype=np.float64)[:, :2]
    inside = (np.abs(xy) <= extent).all(1)
    pal = np.asarray(palette, dtype=np.float64) / 255.0
    size = float(np.clip(15000.0 / max(int(inside.sum()), 1), 0.3, 4.0)) * (50.0 / extent) ** 0.5
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(5.2 * len(cols), 5.4 * len(rows) + 0.9),
                             squeeze=False, sharex=True, sharey=True)
    used: set[int] = set()
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            ax = axes[i, j]
            ax.set_facecolor(_BEV_BACKGROUND)
            if (r, c) not in panels:
                ax.set_axis_off()
                continue
            labels = np.asarray(panels[(r, c)], dtype=np.int64).ravel()
            if len(labels) != len(xy):
                raise ValueError(f"panel {r} / {c}: {len(labels)} labels for {len(xy)} points")
            lab = labels[inside]
            used.update(np.unique(lab).tolist())
            ax.scatter(xy[inside, 0], xy[inside, 1], s=size, c=pal[lab], linewidths=0, rasterized=True)
            for fp in boxes:
                ax.add_patch(Polygon(fp, closed=True, fill=False, edgecolor="white", linewidth=0.7))
            if lane is not None:
                ax.add_patch(Rectangle((-lane[0], -lane[1]), 2 * lane[0], 2 * lane[1], fill=False,
                                                          edgecolor="yellow", linestyle="--", linewidth=0.9))
            if radius is not None:
                ax.add_patch(Circle((0, 0), radius, fill=False, edgecolor="yellow",
                                                       linestyle=":", linewidth=0.9))
            _bev_frame(ax, extent, ylabel=j == 0)
            if i < len(rows) - 1:
                ax.set_xlabel("")  # shared with the row below, whose titles it would cover
            note = (notes or {}).get((r, c))
            ax.set_title(f"{r} · {c}" + (f"\n{note}" if note else ""), fontsize=9.5)
    handles = legend_handles({class_names[k]: palette[k] for k in sorted(used)})
    ncol = min(len(handles), 9, 4 * len(cols)) or 1
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8.5, frameon=False)
    fig.suptitle(title, fontsize=11)
    legend_rows = int(np.ceil(len(handles) / ncol))
    fig.tight_layout(rect=(0, (0.35 + 0.25 * legend_rows) / fig.get_figheight(), 1, 1 - 0.45 / fig.get_figheight()),
                     h_pad=1.5)
    fig.subplots_adjust(hspace=0.2)  # room for the two-line titles of the rows below the first
    return _save(fig, path, dpi=80)


def grouped_share_bars(series: dict[tuple[str, str], Sequence[float]], groups: Sequence[str], path: str | Path,
                       title: str, ylabel: str, goal: tuple[int, float] | None = None) -> Path:
    """Grouped bars of shares (0..1, drawn in %): one group per entry of ``groups``, one bar per series (NaN:
    no bar, "n/a"). Series are keyed (a, b), e.g. (model, input): one colour per b, one hatch per a.
    ``goal`` (group index, share): a dashed target line over that group."""
    n_grp, n_ser = len(groups), len(series)
    fig, ax = plt.subplots(figsize=(max(7.0, min(16.0, 0.3 * n_grp * (n_ser + 1))), 4.4))
    width = 0.84 / max(n_ser, 1)
    colors, hatches = plt.get_cmap("tab10").colors, ["", "//", "..", "xx", "\\\\"]
    firsts, seconds = list(dict.fromkeys(a for a, _ in series)), list(dict.fromkeys(b for _, b in series))
    for s, ((a, b), values) in enumerate(series.items()):
        vals = np.asarray(values, dtype=np.float64) * 100
        x = np.arange(n_grp) + (s - (n_ser - 1) / 2) * width
        ax.bar(x, np.nan_to_num(vals), width, color=colors[seconds.index(b) % len(colors)], edgecolor="black",
               linewidth=0.4, hatch=hatches[firsts.index(a) % len(hatches)], label=f"{a} · {b}")
        for xi, v in zip(x, vals):
            ax.text(xi, (0 if np.isnan(v) else v) + 1.5, "n/a" if np.isnan(v) else f"{v:.0f}", ha="center",
                    va="bottom", fontsize=6.5)
    if goal is not None:
        g, target = goal
        ax.plot([g - 0.45, g + 0.45], [100 * target] * 2, color="black", linestyle="--", linewidth=1.0)
        ax.text(g + 0.47, 100 * target, f"goal {100 * target:.0f}%", va="center", fontsize=7)
    ax.set_xticks(np.arange(n_grp))
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8.5)
    ax.set_ylim(0, 112)
    ax.set_ylabel(ylabel, fontsize=8.5)
    ax.set_title(title, fontsize=10, pad=10 + 12 * int(np.ceil(n_ser / 3)))
    ax.legend(fontsize=7.5, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(n_ser, 3), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)

# Grey for low scores so the scene stays readable on the dark background, then orange -> red -> yellow.
_HEAT = matplotlib.colors.LinearSegmentedColormap.from_list("ssov_query", ["#8a9099", "#e8a33a", "#ff3b1f", "#ffff70"])


def bev_heatmap(points: np.ndarray, scores: np.ndarray, path: str | Path, title: str, label: str = "score",
                extent: float = 50.0, vmin: float | None = None, vmax: float | None = None) -> Path:
    """Bird's-eye view of one scan coloured by a per-point score (text queries), highest scores drawn on top.

    ``points`` (N, 3+) in the sensor frame, ``scores`` (N,); the colour scale spans ``vmin``..``vmax``
    (default: the scores' range) and is labelled ``label``.
    """
    xy = np.asarray(points, dtype=np.float64)[:, :2]
    s = np.asarray(scores, dtype=np.float64).ravel()
    if len(xy) != len(s):
        raise ValueError(f"{len(xy)} points but {len(s)} scores")
    inside = (np.abs(xy) <= extent).all(1)
    xy, s = xy[inside], s[inside]
    order = np.argsort(s, kind="stable")
    size = float(np.clip(15000.0 / max(len(xy), 1), 0.3, 4.0)) * (50.0 / extent) ** 0.5
    fig, ax = plt.subplots(figsize=(7.6, 6.6))
    ax.set_facecolor(_BEV_BACKGROUND)
    lo = float(s.min()) if vmin is None and len(s) else vmin
    hi = float(s.max()) if vmax is None and len(s) else vmax
    top = s[order] >= np.quantile(s, 0.99) if len(s) else np.zeros(0, bool)  # the best 1% drawn larger
    sc = ax.scatter(xy[order, 0], xy[order, 1], c=s[order], s=size * (1 + 2 * top),
                    cmap=_HEAT, vmin=lo, vmax=hi, linewidths=0, rasterized=True)
    _bev_frame(ax, extent)
    fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.03, label=label)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi=100)


def training_curves(runs: dict[str, str | Path], path: str | Path, pseudo_miou: Optional[float] = None,
                    epoch_offsets: Optional[dict[str, int]] = None) -> Path:
    """Training curves of run directories (their ``metrics.csv``): the mean training loss per epoch of each run
    (left) and, for runs that validated, the val mIoU per epoch (right; ``pseudo_miou``: the pseudo-labels' as
    a line).  ``epoch_offsets``: a run that continues another one is drawn from that run's last epoch on."""
    import csv

    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(11, 4))
    any_miou = False
    for k, (name, run_dir) in enumerate(runs.items()):
        colour = f"C{k}"  # one colour per run in both panels
        csv_path = Path(run_dir) / "metrics.csv"
        if not csv_path.is_file():
            continue
        loss: dict[int, list[float]] = {}
        miou: dict[int, float] = {}
        with open(csv_path, newline="") as f:
            for row in csv.DictReader(f):
                if row["name"] == "train/total":
                    loss.setdefault(int(row["epoch"]), []).append(float(row["value"]))
                elif row["name"] == "val/miou":
                    miou[int(row["epoch"])] = 100 * float(row["value"])
        epochs, shift = sorted(loss), (epoch_offsets or {}).get(name, 0)
        if epochs:
            ax_loss.plot([e + shift for e in epochs], [np.mean(loss[e]) for e in epochs], marker="o", label=name,
                         color=colour)
        if miou:
            any_miou = True
            ax_miou.plot([e + shift for e in sorted(miou)], [miou[e] for e in sorted(miou)], marker="o", label=name,
                         color=colour)
    ax_loss.set(xlabel="epoch", ylabel="mean training loss", title="training loss (each stage its own loss)")
    ax_loss.legend(fontsize=8)
    if pseudo_miou is not None:
        ax_miou.axhline(100 * pseudo_miou, color="grey", linestyle="--", label="pseudo-labels (all points)")
        any_miou = True
    ax_miou.set(xlabel="epoch", ylabel="val mIoU (%), all points, no AFI", title="validation")
    if any_miou:
        ax_miou.legend(fontsize=8)
    for ax in (ax_loss, ax_miou):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path)
