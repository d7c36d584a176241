"""Oracle teacher: perfect at level 0, realistically wrong by default, deterministic, and the resumable runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssov_train.config import from_dict
from ssov_train.data.frame import CameraView, Frame
from ssov_train.errors import ConfigError
from ssov_train.teachers.format import TeacherImage, TeacherStore
from ssov_train.teachers.oracle import OracleConfig, OracleTeacher, synthetic_text_embeddings
from ssov_train.teachers.runner import create_store_for, run_teacher
from ssov_train.vocab import load_dictionary

H, W = 120, 200
SKY, MANMADE, VEG, SIDEWALK, ROAD, EGO = 29, 28, 30, 26, 24, 31
CAR, ADULT, CONE, TRUCK, BARRIER = 17, 2, 12, 23, 9
CAR1 = (slice(60, 90), slice(20, 70))
PEDESTRIAN = (slice(63, 68), slice(150, 153))  # 15 px: far and tiny
# Everything but the corruption under test switched off.
QUIET = dict(miss_prob=0.0, merge_prob=0.0, bleed_width=0.0, border_noise=0.0, confusions={})


@pytest.fixture(scope="module")
def vocab():
    return load_dictionary("nuscenes")


def street() -> tuple[np.ndarray, np.ndarray]:
    """Sky, buildings + a tree, sidewalk, road, ego bonnet; two cars, a tiny pedestrian, a cone, a truck."""
    sem = np.full((H, W), SKY, np.uint8)
    sem[30:70] = MANMADE
    sem[40:70, 165:] = VEG
    sem[70:80] = SIDEWALK
    sem[80:110] = ROAD
    sem[110:] = EGO
    inst = np.zeros((H, W), np.uint16)
    for raw, i, box in [(CAR, 1, CAR1), (CAR, 2, (slice(66, 86), slice(95, 125))), (ADULT, 3, PEDESTRIAN),
                        (CONE, 4, (slice(76, 82), slice(135, 141))), (TRUCK, 5, (slice(50, 95), slice(170, 198)))]:
        sem[box], inst[box] = raw, i
    return sem, inst


def camera(tmp_path: Path, token: str, sem: np.ndarray, inst: np.ndarray) -> CameraView:
    """A CameraView over ground-truth PNGs, as the synthetic world writes them."""
    sem_p, inst_p = tmp_path / f"{token}_sem.png", tmp_path / f"{token}_inst.png"
    Image.fromarray(sem).save(sem_p)
    Image.fromarray(inst).save(inst_p)
    k = np.array([[100.0, 0, W / 2], [0, 100.0, H / 2], [0, 0, 1]])
    return CameraView(name="CAM_FRONT", token=token, width=W, height=H, intrinsics=k, lidar_to_camera=np.eye(4),
                      semantic_path=sem_p, instance_path=inst_p)


def pixel_prompts(out: TeacherImage) -> np.ndarray:
    """Per-pixel prompt id, -1 where no mask."""
    m = out.mask_ids.astype(np.int64)
    return np.where(m > 0, out.prompt_ids[np.maximum(m - 1, 0)], -1)


def test_level_zero_reproduces_ground_truth(tmp_path, vocab):
    sem, inst = street()
    cam = camera(tmp_path, "tok0", sem, inst)
    for mode in ("class_regions", "instances"):
        out = OracleTeacher(vocab, OracleConfig(level=0.0, mask_mode=mode)).predict(cam)
        out.validate(vocab.num_prompts, 64, "test")
        p = pixel_prompts(out)
        assert (p >= 0).all()
        assert (vocab.prompt_to_raw[p] == sem).all()
        assert {vocab.prompts[i] for i in np.unique(p[sem == SKY])} <= {"sky", "cloudy sky", "clear sky", "overcast"}
        assert {vocab.prompts[i] for i in np.unique(p[sem == EGO])} == {"bonnet under the picture"}
        assert vocab.prompt_to_eval[p[sem == SKY]].max() == 0


def test_default_level_corrupts_but_keeps_most_pixels(vocab):
    sem, inst = street()
    teacher = OracleTeacher(vocab)
    gt = vocab.raw_to_eval[sem]
    acc, changed = [], 0
    for i in range(20):
        p = pixel_prompts(teacher.predict_ground_truth(sem, inst, f"tok{i}"))
        pred = np.where(p >= 0, vocab.prompt_to_eval[np.maximum(p, 0)], 0)
        acc.append((pred[gt > 0] == gt[gt > 0]).mean())
        changed += bool((vocab.prompt_to_raw[p] != sem).any())
    assert changed == 20
    assert np.mean(acc) > 0.8


def test_bleeding_grows_objects_over_background(vocab):
    sem, inst = street()
    cfg = OracleConfig(mask_mode="instances", **{**QUIET, "bleed_width": 0.02})  # 2-6 px at 200 px width
    out = OracleTeacher(vocab, cfg).predict_ground_truth(sem, inst, "tok")
    car_mask = out.mask_ids == out.mask_ids[75, 45]
    gt_car = (sem == CAR) & (inst == 1)
    assert car_mask[gt_car].all()
    assert car_mask.sum() > gt_car.sum()
    assert car_mask[90, 45] and car_mask[59, 45]  # spilled onto the road below and the building behind
    p = pixel_prompts(out)
    raised = ~np.isin(sem, [SKY, ROAD, SIDEWALK])
    assert not np.isin(vocab.prompt_to_raw[p[raised]], [SKY, ROAD, SIDEWALK]).any()  # background never bleeds
    assert (vocab.prompt_to_raw[p[sem == SKY]] == MANMADE).any()  # buildings spill into the sky


def test_tiny_objects_are_missed_more_often(vocab):
    sem, inst = street()
    teacher = OracleTeacher(vocab)
    kept_ped = kept_car = 0
    n = 200
    for i in range(n):
        p = pixel_prompts(teacher.predict_ground_truth(sem, inst, f"seed{i}"))
        kept_ped += bool((vocab.prompt_to_eval[p[PEDESTRIAN]] == vocab.eval_index("pedestrian")).any())
        kept_car += bool((vocab.prompt_to_eval[p[CAR1]] != 0).all())
    assert kept_car == n
    assert kept_ped < 0.8 * n


def test_adjacent_small_objects_merge(vocab):
    sem = np.full((60, 100), ROAD, np.uint8)
    inst = np.zeros_like(sem, dtype=np.uint16)
    sem[20:26, 20:26], inst[20:26, 20:26] = CONE, 1  # 36 px
    sem[20:26, 26:34], inst[20:26, 26:34] = BARRIER, 2  # 48 px, touching the cone
    cfg = OracleConfig(mask_mode="instances", **{**QUIET, "merge_prob": 1.0, "merge_area": 0.05})
    out = OracleTeacher(vocab, cfg).predict_ground_truth(sem, inst, "tok")
    assert out.mask_ids[22, 22] == out.mask_ids[22, 30]
    assert vocab.categories[vocab.prompt_to_category[pixel_prompts(out)[22, 22]]].name == "barrier"


def test_confusions_only_between_look_alikes(vocab):
    sem, inst = street()
    cfg = OracleConfig(level=2.0, **{k: v for k, v in QUIET.items() if k != "confusions"})
    teacher = OracleTeacher(vocab, cfg)
    allowed = {(a, b) for a, row in cfg.confusions.items() for b in row}
    names = [c.name for c in vocab.categories]
    gt_cat = np.zeros(256, np.int64)
    for r in np.unique(sem):
        gt_cat[r] = names.index(vocab.category_of_raw(int(r)).name)
    gt_cat = gt_cat[sem]
    seen = set()
    for i in range(40):
        pred_cat = vocab.prompt_to_category[pixel_prompts(teacher.predict_ground_truth(sem, inst, f"c{i}"))]
        diff = gt_cat != pred_cat
        seen |= {(names[a], names[b]) for a, b in zip(gt_cat[diff], pred_cat[diff])}
    assert seen and seen <= allowed


def test_mask_modes(tmp_path, vocab):
    sem, inst = street()
    regions = OracleTeacher(vocab, OracleConfig(level=0.0)).predict_ground_truth(sem, inst, "t")
    assert len(set(regions.prompt_ids.tolist())) == regions.num_masks
    assert (np.diff(regions.prompt_ids) > 0).all()  # ordered by prompt id, as CAT-Seg / SAN write them
    inst_out = OracleTeacher(vocab, OracleConfig(level=0.0, mask_mode="instances")).predict_ground_truth(sem, inst, "t")
    car = [c.name for c in vocab.categories].index("car")
    assert (vocab.prompt_to_category[inst_out.prompt_ids] == car).sum() == 2
    assert inst_out.mask_ids[75, 45] != inst_out.mask_ids[75, 110]


def test_deterministic_per_token_and_order_independent(tmp_path, vocab):
    sem, inst = street()
    a, b = camera(tmp_path, "tokA", sem, inst), camera(tmp_path, "tokB", sem, inst)
    t1, t2 = OracleTeacher(vocab), OracleTeacher(vocab)
    out_a1, out_b1 = t1.predict(a), t1.predict(b)
    out_b2, out_a2 = t2.predict(b), t2.predict(a)
    for x, y in [(out_a1, out_a2), (out_b1, out_b2)]:
        for f in ("mask_ids", "prompt_ids", "scores", "features"):
            np.testing.assert_array_equal(getattr(x, f), getattr(y, f))
    assert not np.array_equal(out_a1.mask_ids, out_b1.mask_ids)
    other_seed = OracleTeacher(vocab, OracleConfig(seed=1)).predict(a)
    assert not np.array_equal(out_a1.mask_ids, other_seed.mask_ids)


def test_text_embeddings_cluster_by_category(vocab):
    te = synthetic_text_embeddings(vocab, dim=64, seed=0)
    assert te.shape == (vocab.num_prompts, 64) and te.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(te, axis=1), 1.0, atol=1e-5)
    cos = te @ te.T
    same = vocab.same_category & ~np.eye(vocab.num_prompts, dtype=bool)
    assert cos[same].mean() > 0.8 and abs(cos[~vocab.same_category].mean()) < 0.1
    names = [c.name for c in vocab.categories]
    cat = vocab.prompt_to_category
    car_truck = cos[np.ix_(cat == names.index("car"), cat == names.index("truck"))].mean()
    car_road = cos[np.ix_(cat == names.index("car"), cat == names.index("driveable_surface"))].mean()
    assert car_truck > car_road + 0.1
    np.testing.assert_array_equal(te, synthetic_text_embeddings(vocab, dim=64, seed=0))
    assert not np.array_equal(te, synthetic_text_embeddings(vocab, dim=64, seed=1))


def test_scores_and_features(vocab):
    sem, inst = street()
    teacher = OracleTeacher(vocab)
    te = teacher.text_embeddings()
    out = teacher.predict_ground_truth(sem, inst, "f")
    assert ((out.scores >= 0) & (out.scores <= 1)).all()
    np.testing.assert_allclose(np.linalg.norm(out.features, axis=1), 1.0, atol=1e-5)
    own = (out.features * te[out.prompt_ids]).sum(1)
    assert own.min() > 0.75
    other_category = ~vocab.same_category[out.prompt_ids]
    assert (out.features @ te.T)[other_category].mean() < 0.2
    # A fully confused region scores lower than a correct one, on average over images.
    cfg = OracleConfig(**{**QUIET, "confusions": {"truck": {"car": 1.0}}}, mask_mode="instances")
    conf_teacher = OracleTeacher(vocab, cfg)
    right, wrong = [], []
    for i in range(20):
        o = conf_teacher.predict_ground_truth(sem, inst, f"s{i}")
        right.append(o.scores[o.mask_ids[75, 45] - 1])
        wrong.append(o.scores[o.mask_ids[70, 185] - 1])
    assert np.mean(wrong) < np.mean(right) - 0.2


def test_config_validation(vocab):
    with pytest.raises(ConfigError, match="level"):
        OracleConfig(level=3.0)
    with pytest.raises(ConfigError, match="mask_mode"):
        OracleConfig(mask_mode="panoptic")
    with pytest.raises(ConfigError, match="sum"):
        OracleConfig(confusions={"truck": {"car": 0.7, "trailer": 0.5}})
    with pytest.raises(ConfigError, match="lorry"):
        OracleTeacher(vocab, OracleConfig(confusions={"lorry": {"car": 0.2}}))
    with pytest.raises(ConfigError, match="fence"):
        OracleTeacher(vocab, OracleConfig(prompt_overrides={"static_other": ("fence",)}))
    # As the pipeline builds it from YAML.
    with pytest.raises(ConfigError, match="levle"):
        from_dict(OracleConfig, {"levle": 0.5})
    cfg = from_dict(OracleConfig, {"level": 0.5, "confusions": {"truck": {"car": 0.4}},
                                   "prompt_overrides": {"static_other": ["sky"]}, "stuff_categories": ["manmade"]})
    assert cfg.confusions == {"truck": {"car": 0.4}} and cfg.prompt_overrides == {"static_other": ("sky",)}
    assert cfg.stuff_categories == ("manmade",) and OracleTeacher(vocab, cfg).config.level == 0.5


class CountingTeacher:
    """The oracle, counting predictions (to see what a resumed run recomputes)."""

    def __init__(self, inner: OracleTeacher):
        self.inner, self.calls = inner, 0
        self.name, self.num_prompts, self.feature_dim = inner.name, inner.num_prompts, inner.feature_dim

    def text_embeddings(self) -> np.ndarray:
        return self.inner.text_embeddings()

    def predict(self, cam: CameraView, frame: Frame | None = None) -> TeacherImage:
        self.calls += 1
        return self.inner.predict(cam, frame)


def test_runner_resumes_and_reports_bad_images(tmp_path, vocab):
    sem, inst = street()
    good = [camera(tmp_path, f"cam{i}", sem, inst) for i in range(2)]
    broken = camera(tmp_path, "broken", sem, inst)
    broken.semantic_path.unlink()
    frame = Frame(token="s0", dataset="synthetic", points=np.zeros((1, 3), np.float32),
                  intensity=np.zeros(1, np.float32), cameras=[good[0], broken, good[1]])
    teacher = CountingTeacher(OracleTeacher(vocab))
    store = create_store_for(teacher, tmp_path / "out", "nuscenes")
    failures = run_teacher(teacher, [frame], store)
    assert [t for t, _ in failures] == ["broken"] and "ground truth" in failures[0][1]
    assert store.has("cam0") and store.has("cam1") and not store.has("broken")
    stamps = [p.stat().st_mtime_ns for p in sorted((tmp_path / "out" / "images").iterdir())]

    reopened = create_store_for(teacher, tmp_path / "out", "nuscenes")
    np.testing.assert_array_equal(reopened.text_embeddings(), teacher.text_embeddings())
    teacher.calls = 0
    assert [t for t, _ in run_teacher(teacher, iter([frame]), reopened)] == ["broken"]
    assert teacher.calls == 1  # only the broken image was tried again
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "out" / "images").iterdir())] == stamps
    teacher.calls = 0
    run_teacher(teacher, good, reopened, overwrite=True)
    assert teacher.calls == 2

    loaded = TeacherStore.open(tmp_path / "out").load("cam0")
    direct = OracleTeacher(vocab).predict(good[0])
    np.testing.assert_array_equal(loaded.mask_ids, direct.mask_ids)
    np.testing.assert_array_equal(loaded.prompt_ids, direct.prompt_ids)
