"""The oracle teacher: per-pixel ground truth turned into realistic open-vocabulary teacher outputs.

The synthetic world renders, for every camera image, raw class ids and instance ids.  Handing those to the
student unchanged would make every distillation experiment trivially good, so this teacher imitates the
failure modes of real OV segmenters (CAT-Seg / SAN / FC-CLIP, see docs/synthetic.md), each seeded and
configurable, all scaled by one ``level`` (0 = perfect masks, 1 = the realistic defaults below):

* masks are class regions (one per predicted prompt, CAT-Seg / SAN) or instances (FC-CLIP: one per object
  of a thing category, stuff merged per prompt);
* small / far objects are missed and absorbed into the surrounding background, with a probability that rises
  as the object shrinks;
* adjacent small objects are merged into one region;
* whole regions / instances flip to a look-alike category (sidewalk -> road, trailer -> truck, ...);
* masks bleed a few pixels over object edges, foreground over background, so points just behind a
  silhouette take the foreground label;
* region borders are jagged;
* sky and the ego body get the vocabulary's ignore prompts ("sky", "bonnet under the picture").

Every region's prompt is a random synonym of its predicted category, so prompts vary across images the way
a real teacher's argmax does.  Per-mask scores drop with the share of wrongly labelled pixels, and per-mask
features live in a synthetic "CLIP space" (:func:`synthetic_text_embeddings`) near their prompt's embedding.

Defaults (the values at ``level`` = 1), chosen from what the real teachers are known to get wrong, not tuned
to a target student mIoU; measure the pseudo-label quality they give rather than assuming it:

* ``small_area`` 0.004 of the image (5,760 px at 1600x900, about two CLIP ViT-L/14 patches once CAT-Seg squashes
  the image to 336x336) and ``miss_prob`` 0.9: p(miss) = 0.9 * (1 - sqrt(area / small_area)), i.e. a pedestrian
  at 20 m (~4,000 px) is missed 15% of the time, one at 40 m (~1,000 px) or a cone at 20 m about 50%.
* ``merge_prob`` 0.3 for objects under ``merge_area`` 0.004 of the image touching another small region.
* ``bleed_width`` 0.005 of the image width (8 px at 1600 px, drawn per mask in [0.5, 1.5] x that): the teachers
  upsample masks from 1/4 - 1/16 resolution feature maps.
* confusions (per region or instance, directed): see :data:`DEFAULT_CONFUSIONS`; the rare classes the real
  students score worst on (trailer, construction vehicle, barrier, bicycle) get the largest flip rates, large
  regions (road, buildings) small ones because a whole-region flip of them is rare in practice.
* ``border_noise`` 0.3 of the pixels within ``border_width`` 0.00125 of the width (2 px at 1600) of a region
  border copy a nearby label.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence, get_args

import numpy as np
from scipy import ndimage

from ..data.frame import CameraView, Frame
from ..errors import ConfigError, DataError
from ..vocab.dictionary import ClassDictionary
from .format import TeacherImage

MaskMode = Literal["class_regions", "instances"]
MASK_MODES = get_args(MaskMode)

# true category -> {predicted category: probability per region / instance at level 1}.
DEFAULT_CONFUSIONS: dict[str, dict[str, float]] = {
    "sidewalk": {"driveable_surface": 0.25},
    "driveable_surface": {"sidewalk": 0.05},
    "terrain": {"vegetation": 0.25},
    "vegetation": {"terrain": 0.10},
    "car": {"truck": 0.05},
    "truck": {"car": 0.20, "trailer": 0.03, "construction_vehicle": 0.03, "rigid_bus": 0.03},
    "trailer": {"truck": 0.35},
    "construction_vehicle": {"truck": 0.30},
    "bicycle": {"motorcycle": 0.20},
    "motorcycle": {"bicycle": 0.15},
    "barrier": {"manmade": 0.30},
    "manmade": {"barrier": 0.03},
    "rigid_bus": {"truck": 0.15},
    "bendy_bus": {"truck": 0.15},
}
# Categories whose synthetic text embeddings share part of their centre (look-alikes are near in CLIP space).
DEFAULT_LOOK_ALIKES: tuple[tuple[str, str], ...] = tuple(dict.fromkeys(
    tuple(sorted((a, b))) for a, row in DEFAULT_CONFUSIONS.items() for b in row))
# FC-CLIP's stuff classes (dictionary categories 23..30); every other category is a thing (one mask per object).
DEFAULT_STUFF = ("driveable_surface", "sidewalk", "terrain", "other_flat", "manmade", "vegetation",
                 "static_other", "ego_vehicle")
# Surfaces that lie behind everything else: other masks bleed over them, they bleed over nothing.
DEFAULT_BACKGROUND = ("driveable_surface", "sidewalk", "terrain", "other_flat", "static_other")
# The synthetic world renders sky as static.other: the teacher calls it by one of the vocabulary's sky prompts.
DEFAULT_PROMPT_OVERRIDES: dict[str, tuple[str, ...]] = {"static_other": ("sky", "cloudy sky", "clear sky", "overcast")}

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class OracleConfig:
    """Corruption knobs of the oracle teacher; probabilities and sizes are their values at ``level`` = 1."""

    seed: int = 0
    level: float = 1.0  # scales every mask corruption: 0 = perfect masks, 1 = realistic, up to 2 = worse
    mask_mode: MaskMode = "class_regions"  # class_regions (CAT-Seg / SAN) | instances (FC-CLIP)
    feature_dim: int = 64
    small_area: float = 0.004  # fraction of the image area below which objects may be missed
    miss_prob: float = 0.9  # miss probability of a vanishingly small object
    merge_area: float = 0.004  # fraction of the image area below which adjacent regions may merge
    merge_prob: float = 0.3
    bleed_width: float = 0.005  # fraction of the image width masks spill over lower-lying neighbours
    border_noise: float = 0.3  # probability a pixel near a region border copies a nearby label
    border_width: float = 0.00125  # fraction of the image width
    # true category -> {predicted category: probability}; a row's probabilities must sum to <= 1
    confusions: dict[str, dict[str, float]] = field(
        default_factory=lambda: {a: dict(row) for a, row in DEFAULT_CONFUSIONS.items()})
    synonym_switch: float = 0.15  # chance a region ignores its image's usual synonym of the category (not scaled)
    score_correct: float = 0.85  # mean score of a mask whose pixels are all right
    score_wrong: float = 0.45  # mean score of a mask whose pixels are all wrong
    score_noise: float = 0.08
    feature_noise: float = 0.5  # noise norm relative to the text embedding (cos to it ~ 1/sqrt(1 + n^2))
    stuff_categories: tuple[str, ...] = DEFAULT_STUFF
    background_categories: tuple[str, ...] = DEFAULT_BACKGROUND
    # category -> the only prompts the teacher uses for it
    prompt_overrides: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_PROMPT_OVERRIDES))

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"oracle teacher: seed must be a non-negative integer, got {self.seed!r}")
        if not 0.0 <= self.level <= 2.0:
            raise ConfigError(f"oracle teacher: level must be in [0, 2], got {self.level}")
        if self.mask_mode not in MASK_MODES:
            raise ConfigError(f"oracle teacher: mask_mode must be one of {MASK_MODES}, got {self.mask_mode!r}")
        if self.feature_dim < 2:
            raise ConfigError(f"oracle teacher: feature_dim must be >= 2, got {self.feature_dim}")
        probs = ("miss_prob", "merge_prob", "border_noise", "synonym_switch", "score_correct", "score_wrong")
        for name in probs:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"oracle teacher: {name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("small_area", "merge_area", "bleed_width", "border_width", "score_noise", "feature_noise"):
            if getattr(self, name) < 0:
                raise ConfigError(f"oracle teacher: {name} must be >= 0, got {getattr(self, name)}")
        for a, row in self.confusions.items():
            if any(not 0.0 <= p <= 1.0 for p in row.values()) or sum(row.values()) > 1.0 + 1e-9:
                raise ConfigError(f"oracle teacher: confusions of {a!r} must be probabilities in [0, 1] summing "
                                  f"to at most 1, got {row}")


def synthetic_text_embeddings(dictionary: ClassDictionary, dim: int = 64, seed: int = 0, spread: float = 0.35,
                              share: float = 0.8,
                              look_alikes: Sequence[tuple[str, str]] = DEFAULT_LOOK_ALIKES) -> np.ndarray:
    """(P, dim) float32 unit rows: prompts cluster around a random centre per category.

    ``spread`` is the prompt offset norm relative to the centre (same-category cosine ~ 1 / (1 + spread^2),
    about 0.9); unrelated categories are orthogonal.  Each look-alike pair adds a shared direction of norm
    ``share`` to both centres, so their cosine is moderately high (0.2-0.35 with the defaults; lower for a
    category with many look-alikes, such as truck).  Pairs naming categories the dictionary lacks are skipped.
    Identical prompt strings get identical embeddings, as from a real text encoder ("scooter" is a prompt of
    both motorcycle and personal_mobility in the nuScenes vocabulary, so those two prompts coincide).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7E47]))
    names = [c.name for c in dictionary.categories]
    pairs = [(names.index(a), names.index(b)) for a, b in look_alikes if a in names and b in names]
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    # One direction per category and per look-alike pair; exactly orthogonal when dim allows, so that
    # unrelated categories sit at cosine ~0 and look-alikes at a predictable one.
    basis = rng.standard_normal((dim, len(names) + len(pairs)))
    basis = (np.linalg.qr(basis)[0] if basis.shape[1] <= dim else unit(basis.T).T).T
    centres = basis[:len(names)].copy()
    for j, (a, b) in enumerate(pairs):
        centres[a] += share * basis[len(names) + j]
        centres[b] += share * basis[len(names) + j]
    centres = unit(centres)
    cat = dictionary.prompt_to_category
    emb = unit(centres[cat] + spread * rng.standard_normal((len(cat), dim)) / np.sqrt(dim))
    first: dict[str, int] = {}
    for i, p in enumerate(dictionary.prompts):
        emb[i] = emb[first.setdefault(p, i)]
    return emb.astype(np.float32)


def _rng_for(seed: int, key: str) -> np.random.SeedSequence:
    """A seed sequence that depends only on the seed and the image key (stable across runs and call orders)."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return np.random.SeedSequence([seed, digest])


class OracleTeacher:
    """Turns a camera's per-pixel ground truth into a realistically corrupted :class:`TeacherImage`."""

    name = "oracle"

    def __init__(self, dictionary: ClassDictionary, config: Optional[OracleConfig] = None):
        self.dictionary = dictionary
        self.config = config or OracleConfig()
        cfg = self.config
        cats = [c.name for c in dictionary.categories]
        index = {n: i for i, n in enumerate(cats)}

        def cat_id(name: str, what: str) -> int:
            if name not in index:
                raise ConfigError(f"oracle teacher: {what} names category {name!r}, which dictionary "
                                  f"{dictionary.name} lacks (categories: {cats})")
            return index[name]

        self.num_prompts = dictionary.num_prompts
        self.feature_dim = cfg.feature_dim
        n_cat = len(cats)
        # Raw class -> category (-1: no category, e.g. nuScenes 'noise' -> no mask there).
        self._cat_of_raw = np.full(256, -1, dtype=np.int64)
        for raw in dictionary.raw_classes:
            if raw < 256 and any(c.raw_class == raw for c in dictionary.categories):
                self._cat_of_raw[raw] = index[dictionary.category_of_raw(raw).name]
        self._stuff = np.zeros(n_cat, dtype=bool)
        self._stuff[[cat_id(n, "stuff_categories") for n in cfg.stuff_categories]] = True
        self._background = np.zeros(n_cat, dtype=bool)
        self._background[[cat_id(n, "background_categories") for n in cfg.background_categories]] = True
        # Confusion probabilities at the configured level; rows whose total exceeds 1 are renormalised.
        conf = np.zeros((n_cat, n_cat))
        for a, row in cfg.confusions.items():
            for b, p in row.items():
                conf[cat_id(a, "confusions"), cat_id(b, "confusions")] = p
        conf = np.minimum(conf * cfg.level, 1.0)
        total = conf.sum(1, keepdims=True)
        self._confusion = np.where(total > 1, conf / np.maximum(total, 1e-12), conf)
        # Synonym pools per category (padded matrix + lengths, for vectorised draws).
        pools = [list(range(c.first_prompt, c.first_prompt + len(c.prompts))) for c in dictionary.categories]
        for name, prompts in cfg.prompt_overrides.items():
            c = dictionary.categories[cat_id(name, "prompt_overrides")]
            missing = [p for p in prompts if p not in c.prompts]
            if missing or not prompts:
                raise ConfigError(f"oracle teacher: prompt_overrides for {name!r} must be prompts of that "
                                  f"category; not in it: {missing} (its prompts: {list(c.prompts)})")
            pools[index[name]] = [c.first_prompt + c.prompts.index(p) for p in prompts]
        self._pool_len = np.array([len(p) for p in pools])
        self._pool = np.zeros((n_cat, self._pool_len.max()), dtype=np.int64)
        for i, p in enumerate(pools):
            self._pool[i, :len(p)] = p
        self._text = synthetic_text_embeddings(dictionary, dim=cfg.feature_dim, seed=cfg.seed)

    def text_embeddings(self) -> np.ndarray:
        return self._text.copy()

    def predict(self, camera: CameraView, frame: Optional[Frame] = None, *,
                rng_key: Optional[str] = None) -> TeacherImage:
        """Teacher output for one camera image; deterministic in (config.seed, ``rng_key`` or the camera token).

        The ground truth comes from the camera's own files, so ``frame`` (part of the runner's teacher
        interface, for teachers that need the whole sample) is not needed.
        """
        sem, inst = camera.load_semantic()
        where = f"camera {camera.name} ({camera.token})"
        if sem.ndim != 2:
            raise DataError(f"{where}: semantic ground truth must be a single-channel image, got shape {sem.shape}")
        if inst is not None and inst.shape != sem.shape:
            raise DataError(f"{where}: instance map {inst.shape} and semantic map {sem.shape} differ in size")
        return self.predict_ground_truth(sem, inst, rng_key or camera.token)

    def predict_ground_truth(self, sem: np.ndarray, inst: Optional[np.ndarray], rng_key: str) -> TeacherImage:
        """Teacher output from in-memory ground truth: raw class ids (H, W) and instance ids (H, W) or None."""
        cfg, level = self.config, self.config.level
        h, w = sem.shape
        r_miss, r_merge, r_conf, r_syn, r_bleed, r_border, r_score, r_feat = [
            np.random.default_rng(s) for s in _rng_for(cfg.seed, rng_key).spawn(8)]
        sem = sem.astype(np.int64)
        labels, seg_cat, thing = self._segments(sem, inst)
        n = len(seg_cat)
        area = np.bincount(labels[labels >= 0], minlength=n)
        boxes = _boxes(labels, n)

        # Small objects missed (absorbed into what surrounds them), then small neighbours merged.
        small = cfg.small_area * h * w
        rel = np.sqrt(area / small) if small > 0 else np.ones(n)
        p_miss = min(1.0, level * cfg.miss_prob) * np.clip(1.0 - rel, 0.0, 1.0) * thing
        missed = r_miss.random(n) < p_miss
        gone = np.zeros(n, dtype=bool)
        for s in np.flatnonzero(missed)[np.argsort(area[missed], kind="stable")]:
            ids, counts = _neighbours(labels, boxes, s)
            keep = ids >= 0
            if keep.any():
                _absorb(labels, boxes, area, gone, s, int(ids[keep][np.argmax(counts[keep])]))
        merge_px = cfg.merge_area * h * w
        want = thing & ~gone & (area < merge_px) & (r_merge.random(n) < min(1.0, level * cfg.merge_prob))
        for s in np.flatnonzero(want)[np.argsort(area[want], kind="stable")]:
            if gone[s]:
                continue
            ids, counts = _neighbours(labels, boxes, s)
            ok = (ids >= 0) & (area[np.maximum(ids, 0)] < merge_px)
            if ok.any():
                other = int(ids[ok][np.argmax(counts[ok])])
                big, little = (other, s) if area[other] >= area[s] else (s, other)
                _absorb(labels, boxes, area, gone, little, big)

        # Whole-region confusions, then a synonym per region (usually the image's usual one for the category).
        cum = np.cumsum(self._confusion[seg_cat], axis=1)
        flip = (r_conf.random(n)[:, None] >= cum).sum(1)
        pred = np.where(flip < cum.shape[1], flip, seg_cat)
        usual = np.floor(r_syn.random(len(self._pool_len)) * self._pool_len).astype(np.int64)
        any_syn = np.floor(r_syn.random(n) * self._pool_len[pred]).astype(np.int64)
        seg_prompt = self._pool[pred, np.where(r_syn.random(n) < cfg.synonym_switch, any_syn, usual[pred])]

        # Bleeding (foreground over background), then jagged borders.
        tier = np.where(thing, 2, np.where(self._background[seg_cat], 0, 1))
        widths = level * cfg.bleed_width * w * r_bleed.uniform(0.5, 1.5, n)
        if widths.size and widths.max() > 0:
            labels = _bleed(labels, tier, widths)
        p_border = min(1.0, level * cfg.border_noise)
        if p_border > 0:
            labels = _jitter_borders(labels, max(1, round(cfg.border_width * w)), p_border, r_border)

        # Masks.
        covered = labels >= 0
        prompt_px = np.full(labels.shape, -1, dtype=np.int64)
        prompt_px[covered] = seg_prompt[labels[covered]]
        key = prompt_px.copy()
        if cfg.mask_mode == "instances":  # thing-category regions keep their own mask, stuff merges per prompt
            own = covered.copy()
            own[covered] = ~self._stuff[pred[labels[covered]]]
            key[own] = self.num_prompts + labels[own]
        valid = key >= 0
        present = np.bincount(key[valid], minlength=self.num_prompts + n) > 0  # sorted unique keys, no sort
        k = int(present.sum())
        if k > np.iinfo(np.uint16).max:
            raise DataError(f"oracle teacher: image {rng_key} would need {k} masks (max 65535)")
        inverse = (np.cumsum(present) - 1)[key[valid]]
        mask_ids = np.zeros((h, w), dtype=np.uint16)
        mask_ids[valid] = inverse + 1
        prompt_ids = np.zeros(k, dtype=np.int32)
        prompt_ids[inverse] = prompt_px[valid]

        # Scores fall with the share of wrong pixels; features sit near the predicted prompt's text embedding.
        wrong = self.dictionary.prompt_to_raw[prompt_px[valid]] != sem[valid]
        frac_wrong = np.bincount(inverse, weights=wrong, minlength=k) / np.maximum(np.bincount(inverse, minlength=k), 1)
        mean = cfg.score_correct - (cfg.score_correct - cfg.score_wrong) * frac_wrong
        scores = np.clip(mean + cfg.score_noise * r_score.standard_normal(k), 0.0, 1.0).astype(np.float32)
        noise = r_feat.standard_normal((k, cfg.feature_dim)) * (cfg.feature_noise / np.sqrt(cfg.feature_dim))
        feats = self._text[prompt_ids] + noise
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        return TeacherImage(mask_ids=mask_ids, prompt_ids=prompt_ids, scores=scores, features=feats.astype(np.float32))

    def _segments(self, sem: np.ndarray, inst: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Label map (-1 = no category) of the units corruptions act on: one per object instance of a thing
        category, one per connected component of everything else; plus each unit's category (always valid)
        and thing flag."""
        cat = np.where((sem >= 0) & (sem < 256), self._cat_of_raw[np.clip(sem, 0, 255)], -1)
        is_thing = (cat >= 0) & ~self._stuff[np.maximum(cat, 0)]
        labels = np.full(sem.shape, -1, dtype=np.int64)
        seg_cat: list[np.ndarray] = []
        n = 0
        if inst is not None:
            keyed = is_thing & (inst > 0)
            uniq, inv = np.unique((sem[keyed] << 16) | inst[keyed].astype(np.int64), return_inverse=True)
            labels[keyed] = inv
            seg_cat.append(self._cat_of_raw[uniq >> 16])
            n = len(uniq)
        rest = (cat >= 0) & (labels < 0)
        for raw in np.unique(sem[rest]):
            comp, k = ndimage.label(rest & (sem == raw), structure=_EIGHT)
            inside = comp > 0
            labels[inside] = comp[inside] - 1 + n
            seg_cat.append(np.full(k, self._cat_of_raw[raw]))
            n += k
        cats = np.concatenate(seg_cat) if seg_cat else np.zeros(0, dtype=np.int64)
        return labels, cats, ~self._stuff[cats]


def _boxes(labels: np.ndarray, n: int) -> np.ndarray:
    """(n, 4) bounding boxes [y0, y1, x0, x1) of every segment (empty ones get a zero box)."""
    out = np.zeros((n, 4), dtype=np.int64)
    for i, sl in enumerate(ndimage.find_objects(labels + 1, max_label=n)):
        if sl is not None:
            out[i] = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
    return out


def _neighbours(labels: np.ndarray, boxes: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Segment ids touching segment ``s`` and the length of border each shares with it."""
    y0, y1, x0, x1 = boxes[s]
    sl = (slice(max(y0 - 1, 0), y1 + 1), slice(max(x0 - 1, 0), x1 + 1))
    sub = labels[sl]
    m = sub == s
    ring = ndimage.binary_dilation(m, structure=_EIGHT) & ~m
    return np.unique(sub[ring], return_counts=True)


def _absorb(labels: np.ndarray, boxes: np.ndarray, area: np.ndarray, gone: np.ndarray, src: int, dst: int) -> None:
    """Relabel segment ``src`` as ``dst`` in place, keeping areas and boxes current."""
    y0, y1, x0, x1 = boxes[src]
    sub = labels[y0:y1, x0:x1]
    sub[sub == src] = dst
    area[dst] += area[src]
    area[src] = 0
    b = boxes[dst]
    boxes[dst] = min(b[0], y0), max(b[1], y1), min(b[2], x0), max(b[3], x1)
    gone[src] = True


def _bleed(labels: np.ndarray, tier: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Grow every segment over lower-tier pixels within its bleed width (the nearest segment of a tier wins)."""
    pixel_tier = np.where(labels >= 0, tier[np.maximum(labels, 0)], -1)
    out = labels.copy()
    pad = int(np.ceil(widths.max()))
    for t in np.unique(tier[tier > 0]):
        src = pixel_tier == t
        rows, cols = np.flatnonzero(src.any(1)), np.flatnonzero(src.any(0))
        if not len(rows):
            continue
        # Only the tier's bounding box grown by the widest bleed can change: transform just that window.
        win = (slice(max(rows[0] - pad, 0), rows[-1] + pad + 1), slice(max(cols[0] - pad, 0), cols[-1] + pad + 1))
        dist, (iy, ix) = ndimage.distance_transform_edt(~src[win], return_indices=True)
        near = labels[win][iy, ix]
        grow = (pixel_tier[win] < t) & (dist <= widths[near])
        out[win][grow] = near[grow]
    return out


def _jitter_borders(labels: np.ndarray, radius: int, prob: float, rng: np.random.Generator) -> np.ndarray:
    """Pixels within ``radius`` of a region border copy, with probability ``prob``, the label of a nearby pixel."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[1:] != labels[:-1]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    if radius > 1:
        edge = ndimage.binary_dilation(edge, iterations=radius - 1)
    ys, xs = np.nonzero(edge)
    pick = rng.random(len(ys)) < prob
    ys, xs = ys[pick], xs[pick]
    dy, dx = rng.integers(-radius, radius + 1, size=(2, len(ys)))
    out = labels.copy()
    h, w = labels.shape
    out[ys, xs] = labels[np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)]
    return out
