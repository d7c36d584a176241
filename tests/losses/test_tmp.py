"""TMP loss (method.md §3) against values worked out by hand on 2-D toys."""

import math

import numpy as np
import pytest
import torch

from ssov_train.errors import DataError
from ssov_train.losses import (TMPBatch, TMPLoss, batch_superpoints, pool_superpoints, superpixel_superpoint_loss,
                               text_superpoint_loss, text_targets)
from ssov_train.superpoints import SuperpointSample

# Points p0=(1,0), p1=(0,1), p2=(0.6,0.8); superpoint 0 <- p0, p0 (duplicate pairing), p1;
# superpoint 1 <- p2; superpoint 2 has no pairing.
POINTS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
PAIR_POINT = torch.tensor([0, 0, 1, 2])
PAIR_SP = torch.tensor([0, 0, 0, 1])
C3, C1 = 3 + 1e-6, 1 + 1e-6  # pairing counts + the reference's 1e-6

# 4 prompts in 2 categories: t0=(1,0), t1=(0.6,0.8) | t2=(0,1), t3=(-0.6,0.8)
TEXT = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.6, 0.8]], dtype=torch.float64)
CATEGORY = np.array([0, 0, 1, 1])
SAME = CATEGORY[:, None] == CATEGORY[None, :]


def lse(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def test_pool_mean_over_pairings_with_duplicates_and_empty():
    k = pool_superpoints(POINTS, PAIR_POINT, PAIR_SP, 3)
    expected = torch.tensor([[2 / C3, 1 / C3], [0.6 / C1, 0.8 / C1], [0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(k, expected, rtol=0, atol=1e-12)


def test_pool_renormalize_option():
    k = pool_superpoints(POINTS, PAIR_POINT, PAIR_SP, 3, renormalize=True)
    expected = torch.tensor([[2 / math.sqrt(5), 1 / math.sqrt(5)], [0.6, 0.8], [0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(k, expected, rtol=0, atol=1e-12)


def test_infonce_hand_value():
    # k0=(2,1)/C3, k1=(0.6,0.8)/C1 against q0=(1,0), q1=(0,1); each row is a 2-way softmax.
    k = pool_superpoints(POINTS, PAIR_POINT, PAIR_SP, 2)
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    tau = 0.07
    row0 = lse(2 / C3 / tau, 1 / C3 / tau) - 2 / C3 / tau
    row1 = lse(0.6 / C1 / tau, 0.8 / C1 / tau) - 0.8 / C1 / tau
    assert superpixel_superpoint_loss(k, q, tau).item() == pytest.approx((row0 + row1) / 2, rel=1e-12)


K3 = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=torch.float64)
Q3 = torch.tensor([[0.8, 0.6], [0.6, 0.8], [0.0, 1.0]], dtype=torch.float64)
# k q^T = [[0.8, 0.6, 0.0], [0.96, 1.0, 0.8], [0.6, 0.8, 1.0]]; tau = 0.5 -> logits doubled.


def test_infonce_same_category_masking_hand_value():
    unmasked = (lse(1.6, 1.2, 0.0) - 1.6 + lse(1.92, 2.0, 1.6) - 2.0 + lse(1.2, 1.6, 2.0) - 2.0) / 3
    assert superpixel_superpoint_loss(K3, Q3, 0.5).item() == pytest.approx(unmasked, rel=1e-12)
    # Superpoints 0 and 1 share a category: row 0 drops column 1, row 1 drops column 0, row 2 is unchanged.
    mask = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    masked = (lse(1.6, 0.0) - 1.6 + lse(2.0, 1.6) - 2.0 + lse(1.2, 1.6, 2.0) - 2.0) / 3
    assert superpixel_superpoint_loss(K3, Q3, 0.5, mask).item() == pytest.approx(masked, rel=1e-12)
    assert masked < unmasked


def test_text_targets_formula_on_two_category_toy():
    y = text_targets(2.0 * TEXT, SAME)  # scaled embeddings: the target uses cosines
    expected = torch.tensor([[1.0 / 1.48, 0.48 / 1.48, 0, 0], [0.48 / 1.48, 1.0 / 1.48, 0, 0],
                             [0, 0, 1.0 / 1.64, 0.64 / 1.64], [0, 0, 0.64 / 1.64, 1.0 / 1.64]])
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(y.sum(1), torch.ones(4), rtol=0, atol=1e-6)


def test_text_targets_clamp_negative_same_category_cosine():
    text = TEXT.clone()
    text[3] = torch.tensor([0.6, -0.8])  # cos(t2, t3) = -0.8 within category 1; cos with t0 irrelevant
    y = text_targets(text, SAME)
    torch.testing.assert_close(y[2:], torch.tensor([[0.0, 0, 1, 0], [0, 0, 0, 1]]), rtol=0, atol=1e-7)
    assert (y >= 0).all()


def test_text_loss_hand_value():
    # k=(1,0) labelled prompt 0, tau 0.5: logits = 2 * (1, 0.6, 0, -0.6); target (1, 0.48, 0, 0) / 1.48.
    targets = text_targets(TEXT, SAME).double()
    k = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    z = lse(2.0, 1.2, 0.0, -1.2)
    expected = -(1.0 / 1.48) * (2.0 - z) - (0.48 / 1.48) * (1.2 - z)
    loss = text_superpoint_loss(k, torch.tensor([0]), TEXT, targets, tau=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def _toy_batch() -> TMPBatch:
    # Superpoint 0: prompt 0 (cat 0), mask feature (3, 0) -> q=(1,0); superpoint 1: prompt 1 (cat 0),
    # feature (0, 2) -> q=(0,1); superpoint 2 (prompt 2) has no pairing and must be skipped.
    return TMPBatch(pair_point=PAIR_POINT, pair_superpoint=PAIR_SP, superpoint_prompt=torch.tensor([0, 1, 2]),
                    superpoint_feature=torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]]),
                    superpoint_scan=torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_tmp_loss_total_hand_value_and_skips_empty_superpoints(tau):
    out = TMPLoss(TEXT, SAME, tau=tau)(POINTS, _toy_batch())
    k0, k1 = (2 / C3, 1 / C3), (0.6 / C1, 0.8 / C1)
    ip = (lse(k0[0] / tau, k0[1] / tau) - k0[0] / tau + lse(k1[0] / tau, k1[1] / tau) - k1[1] / tau) / 2

    def text_row(k, label):
        logits = [(k[0] * t[0] + k[1] * t[1]) / tau for t in TEXT.tolist()]
        z = lse(*logits)
        target = {0: (1.0 / 1.48, 0.48 / 1.48), 1: (0.48 / 1.48, 1.0 / 1.48)}[label]
        return -(target[0] * (logits[0] - z) + target[1] * (logits[1] - z))

    tp = (text_row(k0, 0) + text_row(k1, 1)) / 2
    assert out["superpixel_superpoint"].item() == pytest.approx(ip, rel=1e-6)
    assert out["text_superpoint"].item() == pytest.approx(tp, rel=1e-6)
    assert out["total"].item() == pytest.approx(0.5 * ip + 0.5 * tp, rel=1e-6)


def test_tmp_loss_options():
    batch = _toy_batch()
    plain = TMPLoss(TEXT, SAME)(POINTS, batch)
    # Both kept superpoints are category 0: masking leaves only the positive in each InfoNCE row.
    masked = TMPLoss(TEXT, SAME, mask_same_category_negatives=True)(POINTS, batch)
    assert masked["superpixel_superpoint"].item() == pytest.approx(0.0, abs=1e-12)
    assert masked["text_superpoint"].item() == pytest.approx(plain["text_superpoint"].item(), rel=1e-12)
    renorm = TMPLoss(TEXT, SAME, renormalize_superpoints=True)(POINTS, batch)
    k0, tau = (2 / math.sqrt(5), 1 / math.sqrt(5)), 0.07
    ip = (lse(k0[0] / tau, k0[1] / tau) - k0[0] / tau + lse(0.6 / tau, 0.8 / tau) - 0.8 / tau) / 2
    assert renorm["superpixel_superpoint"].item() == pytest.approx(ip, rel=1e-6)


def test_tmp_loss_no_superpoint_is_zero_with_grad():
    feats = POINTS.clone().requires_grad_()
    batch = TMPBatch(pair_point=torch.zeros(0, dtype=torch.long), pair_superpoint=torch.zeros(0, dtype=torch.long),
                     superpoint_prompt=torch.tensor([1]), superpoint_feature=torch.ones(1, 2),
                     superpoint_scan=torch.zeros(1, dtype=torch.long))
    out = TMPLoss(TEXT, SAME)(feats, batch)
    assert {k: v.item() for k, v in out.items()} == {"total": 0.0, "superpixel_superpoint": 0.0, "text_superpoint": 0.0}
    out["total"].backward()
    assert torch.equal(feats.grad, torch.zeros_like(feats))


@pytest.mark.parametrize("mask_negatives", [False, True])
@pytest.mark.parametrize("renormalize", [False, True])
def test_gradcheck_tmp(mask_negatives, renormalize):
    torch.manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(6, 3, dtype=torch.float64), dim=1).requires_grad_()
    q = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    text = torch.randn(4, 3, dtype=torch.float64)
    pair_point = torch.tensor([0, 1, 1, 2, 3, 4, 5, 5])
    pair_sp = torch.tensor([0, 0, 0, 1, 2, 2, 3, 1])
    prompts = torch.tensor([0, 1, 2, 3])
    loss = TMPLoss(text, SAME, tau=0.5, renormalize_superpoints=renormalize,
                   mask_same_category_negatives=mask_negatives).double()

    def total(f, qq):
        batch = TMPBatch(pair_point, pair_sp, prompts, qq, torch.zeros(4, dtype=torch.long))
        return loss(f, batch)["total"]

    assert torch.autograd.gradcheck(total, (feats, q))


def test_gradcheck_text_loss():
    torch.manual_seed(1)
    k = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    targets = text_targets(TEXT, SAME).double()
    prompts = torch.tensor([0, 2, 3])
    assert torch.autograd.gradcheck(lambda x: text_superpoint_loss(x, prompts, TEXT, targets, 0.5), (k,))


def _sample(token, num_points, pair_point, pair_sp, prompts, features):
    m, s = len(pair_point), len(prompts)
    return SuperpointSample(
        token=token, num_points=num_points, cameras=["CAM"], image_tokens=["img"],
        pair_point=np.array(pair_point, np.int32), pair_camera=np.zeros(m, np.uint8),
        pair_pixel=np.zeros((m, 2), np.uint16), pair_mask=np.ones(m, np.uint16),
        pair_superpoint=np.array(pair_sp, np.int32), superpoint_camera=np.zeros(s, np.uint8),
        superpoint_mask=np.arange(1, s + 1).astype(np.uint16), superpoint_prompt=np.array(prompts, np.int32),
        superpoint_score=np.ones(s, np.float32),
        superpoint_feature=None if features is None else np.array(features, np.float16),
        superpoint=np.full(num_points, -1, np.int32), pseudo_label=np.zeros(num_points, np.uint8),
        pseudo_prompt=np.full(num_points, -1, np.int16), pseudo_score=np.zeros(num_points, np.float16))


A = _sample("a", 3, [0, 1, 2], [0, 1, 1], [5, 7], [[1, 0], [0, 1]])
B = _sample("b", 2, [0, 1, 1], [0, 1, 2], [3, 4, 9], [[1, 1], [2, 0], [0, 2]])


def test_batch_offsets_superpoint_ids_and_points():
    b = batch_superpoints([A, B])
    assert b.pair_point.dtype == torch.int64 and b.pair_superpoint.dtype == torch.int64
    assert b.pair_point.tolist() == [0, 1, 2, 3, 4, 4]
    assert b.pair_superpoint.tolist() == [0, 1, 1, 2, 3, 4]
    assert b.superpoint_prompt.tolist() == [5, 7, 3, 4, 9]
    assert b.superpoint_scan.tolist() == [0, 0, 1, 1, 1]
    assert b.superpoint_feature.dtype == torch.float32 and b.superpoint_feature[3].tolist() == [2.0, 0.0]


def test_batch_drops_superpoints_left_without_pairing():
    # Scan b's point 1 is not in the batch (e.g. cropped): its superpoints 1 and 2 lose every pairing.
    b = batch_superpoints([A, B], point_rows=[np.array([0, 1, 2]), np.array([3, -1])])
    assert b.pair_point.tolist() == [0, 1, 2, 3]
    assert b.pair_superpoint.tolist() == [0, 1, 1, 2]
    assert b.superpoint_prompt.tolist() == [5, 7, 3]
    assert b.superpoint_scan.tolist() == [0, 0, 1]


def test_batch_requires_mask_features():
    with pytest.raises(DataError, match="no mask features"):
        batch_superpoints([_sample("c", 1, [0], [0], [1], None)])


def test_batch_offsets_follow_point_counts_not_pairing_counts():
    # Scan c has 5 points but only 2 pairings (points 1 and 4) and 3 superpoints of which 1 is unpaired: scan b's
    # rows start after c's 5 points (not its 2 pairings), its superpoints after c's 2 used ones (not its 3).
    c = _sample("c", 5, [1, 4], [0, 2], [5, 6, 7], [[1, 0], [0, 3], [0, 1]])
    b = batch_superpoints([c, B])
    assert b.pair_point.tolist() == [1, 4, 5, 6, 6]
    assert b.pair_superpoint.tolist() == [0, 1, 2, 3, 4]
    assert b.superpoint_prompt.tolist() == [5, 7, 3, 4, 9]
    assert b.superpoint_scan.tolist() == [0, 0, 1, 1, 1]
    assert b.superpoint_feature.tolist() == [[1, 0], [0, 1], [1, 1], [2, 0], [0, 2]]


def test_batch_with_point_rows_keeps_long_ids_and_float32_features():
    # point_rows as int32 arrays (as a voxelizer's inverse map may come): the batch ids are still int64.
    b = batch_superpoints([A, B], point_rows=[np.array([2, 0, 1], np.int32), np.array([4, 3], np.int32)])
    assert b.pair_point.tolist() == [2, 0, 1, 4, 3, 3]
    assert b.pair_superpoint.tolist() == [0, 1, 1, 2, 3, 4]
    dtypes = {f: getattr(b, f).dtype for f in ("pair_point", "pair_superpoint", "superpoint_prompt", "superpoint_scan")}
    assert dtypes == dict.fromkeys(dtypes, torch.int64)
    assert b.superpoint_feature.dtype == torch.float32 and b.num_superpoints == 5


def test_batch_input_errors_name_the_problem():
    with pytest.raises(ValueError, match="^batch_superpoints needs at least one sample$"):
        batch_superpoints([])
    with pytest.raises(ValueError, match="point_rows has 1 entries for 2 samples"):
        batch_superpoints([A, B], point_rows=[np.arange(3)])
    with pytest.raises(ValueError, match=r"point_rows\[1\] has 3 entries, sample b has 2 points"):
        batch_superpoints([A, B], point_rows=[np.arange(3), np.arange(3)])
    with pytest.raises(DataError, match="superpoints of sample c have no mask features; TMP needs a teacher that "
                                        "stores them"):
        batch_superpoints([_sample("c", 1, [0], [0], [1], None)])


def test_batch_to_moves_every_field():
    b = batch_superpoints([A, B]).to("meta")  # the meta device: a move without a GPU
    for f in ("pair_point", "pair_superpoint", "superpoint_prompt", "superpoint_feature", "superpoint_scan"):
        assert getattr(b, f).device.type == "meta", f
    assert b.pair_point.shape == (6,) and b.superpoint_feature.shape == (5, 2)


def test_default_temperature_is_0_07():
    k = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    k2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # k2 q^T = [[1, 0.6], [0, 0.8]]
    expected = (lse(1 / 0.07, 0.6 / 0.07) - 1 / 0.07 + lse(0.0, 0.8 / 0.07) - 0.8 / 0.07) / 2
    assert superpixel_superpoint_loss(k2, q).item() == pytest.approx(expected, rel=1e-12)
    targets = text_targets(TEXT, SAME).double()
    logits = [1 / 0.07, 0.6 / 0.07, 0.0, -0.6 / 0.07]
    z = lse(*logits)
    text_expected = -(1.0 / 1.48) * (logits[0] - z) - (0.48 / 1.48) * (logits[1] - z)
    assert text_superpoint_loss(k, torch.tensor([0]), TEXT, targets).item() == pytest.approx(text_expected, rel=1e-6)
    assert TMPLoss(TEXT, SAME).tau == 0.07


def test_text_targets_default_weights_and_bad_shape():
    # alpha_onehot 0.2, alpha_text 0.8: row 0 = (0.2 + 0.8, 0.8 * 0.6) / 1.48 -- checked in the formula test above;
    # here other weights: alpha_onehot 1, alpha_text 1 -> row 0 = (2, 0.6) / 2.6
    y = text_targets(TEXT, SAME, alpha_onehot=1.0, alpha_text=1.0)
    torch.testing.assert_close(y[0], torch.tensor([2 / 2.6, 0.6 / 2.6, 0, 0]), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"same_category must be \(4, 4\), got \(4, 3\)"):
        text_targets(TEXT, SAME[:, :3])
    with pytest.raises(ValueError, match=r"same_category must be \(4, 4\), got \(3, 4\)"):
        text_targets(TEXT, SAME[:3])


def test_tmp_loss_weights_and_single_superpoint():
    # alpha_image 1, alpha_text 0: the total is the InfoNCE alone; a batch with one superpoint has InfoNCE 0
    batch = _toy_batch()
    plain = TMPLoss(TEXT, SAME)(POINTS, batch)
    image_only = TMPLoss(TEXT, SAME, alpha_image=1.0, alpha_text=0.0)(POINTS, batch)
    assert image_only["total"].item() == pytest.approx(plain["superpixel_superpoint"].item(), rel=1e-12)
    text_only = TMPLoss(TEXT, SAME, alpha_image=0.0, alpha_text=2.0)(POINTS, batch)
    assert text_only["total"].item() == pytest.approx(2 * plain["text_superpoint"].item(), rel=1e-12)
    one = TMPBatch(pair_point=torch.tensor([2]), pair_superpoint=torch.tensor([0]), superpoint_prompt=torch.tensor([1]),
                   superpoint_feature=torch.tensor([[0.0, 5.0]]), superpoint_scan=torch.zeros(1, dtype=torch.long))
    out = TMPLoss(TEXT, SAME)(POINTS, one)
    assert out["superpixel_superpoint"].item() == pytest.approx(0.0, abs=1e-12)
    assert out["text_superpoint"].item() > 0


def test_batch_offsets_accumulate_over_three_scans():
    # a (3 points, 2 used superpoints), b (2 points, 3), a again: the third scan starts after 3 + 2 points and
    # 2 + 3 superpoints (a running sum, not the previous scan's count alone).
    b = batch_superpoints([A, B, A])
    assert b.pair_point.tolist() == [0, 1, 2, 3, 4, 4, 5, 6, 7]
    assert b.pair_superpoint.tolist() == [0, 1, 1, 2, 3, 4, 5, 6, 6]
    assert b.superpoint_scan.tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert b.superpoint_prompt.tolist() == [5, 7, 3, 4, 9, 5, 7]


def test_tmp_loss_same_category_as_integer_matrix():
    # a 0/1 integer matrix is read as booleans: both kept superpoints are category 0, so the masked InfoNCE is 0
    out = TMPLoss(TEXT, SAME.astype(np.int64), mask_same_category_negatives=True)(POINTS, _toy_batch())
    assert out["superpixel_superpoint"].item() == pytest.approx(0.0, abs=1e-12)


def test_losses_follow_the_device_of_their_inputs():
    # PyTorch's meta device stands in for a GPU: every tensor the losses make must be created on the inputs' device
    # (a CPU helper tensor mixed with meta ones raises).
    k, q = torch.zeros(3, 2, device="meta"), torch.zeros(3, 2, device="meta")
    cpu_mask = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    assert superpixel_superpoint_loss(k, q, 0.5, cpu_mask).device.type == "meta"
    assert superpixel_superpoint_loss(k, q, 0.5).device.type == "meta"
    assert text_targets(TEXT.to("meta"), SAME).device.type == "meta"


def test_text_targets_rows_normalised_with_unequal_row_sums():
    # One category of three prompts t0 = (1, 0), t1 = (0.6, 0.8), t2 = (0, 1): cosines 0.6 (t0, t1), 0 (t0, t2),
    # 0.8 (t1, t2). Unnormalised rows: (1, 0.48, 0), (0.48, 1, 0.64), (0, 0.64, 1) with sums 1.48, 2.12, 1.64.
    y = text_targets(TEXT[:3], np.ones((3, 3), bool))
    expected = torch.tensor([[1 / 1.48, 0.48 / 1.48, 0], [0.48 / 2.12, 1 / 2.12, 0.64 / 2.12], [0, 0.64 / 1.64, 1 / 1.64]])
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)
