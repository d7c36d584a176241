"""Lovász-softmax and the stage-2 segmentation loss against values worked out by hand from the definition."""

import math

import pytest
import torch
import torch.nn.functional as F

from ssov_train.losses import SegmentationLoss, lovasz_grad, lovasz_softmax

# 3 voxels, 2 classes, labels (1, 1, 0).
PROBS = torch.tensor([[0.2, 0.8], [0.6, 0.4], [0.7, 0.3]], dtype=torch.float64)
LABELS = torch.tensor([1, 1, 0])
# Class 1: errors (0.2, 0.6, 0.3), sorted 0.6 (in class), 0.3 (not), 0.2 (in); |class| = 2.
#   prefixes: J = 1 - 1/2, 1 - 1/3, 1 - 0/3 -> increments 1/2, 1/6, 1/3 -> 0.6/2 + 0.3/6 + 0.2/3 = 5/12.
# Class 0: errors (0.2, 0.6, 0.3), sorted 0.6 (not), 0.3 (in), 0.2 (not); |class| = 1.
#   prefixes: J = 1 - 1/2, 1 - 0/2, 1 - 0/3 -> increments 1/2, 1/2, 0 -> 0.3 + 0.15 = 0.45.
HAND = (5 / 12 + 0.45) / 2


def test_lovasz_grad_increments():
    g = lovasz_grad(torch.tensor([1.0, 0.0, 1.0]))
    torch.testing.assert_close(g, torch.tensor([1 / 2, 1 / 6, 1 / 3]))


def test_hand_value_two_classes():
    assert lovasz_softmax(PROBS, LABELS).item() == pytest.approx(HAND, rel=1e-12)


def test_perfect_prediction_is_zero():
    probs = F.one_hot(torch.tensor([0, 2, 1, 2]), 3).double()
    assert lovasz_softmax(probs, torch.tensor([0, 2, 1, 2]), classes="all").item() == 0.0


def test_hard_predictions_give_jaccard_loss():
    # Labels (0, 0, 1, 1), predictions (0, 1, 1, 0): IoU of each class is 1/3 -> loss 2/3.
    probs = F.one_hot(torch.tensor([0, 1, 1, 0]), 2).double()
    assert lovasz_softmax(probs, torch.tensor([0, 0, 1, 1])).item() == pytest.approx(2 / 3, rel=1e-12)


def test_ignore_drops_voxels():
    probs = torch.cat([PROBS, torch.tensor([[0.9, 0.1], [0.5, 0.5]], dtype=torch.float64)])
    labels = torch.cat([LABELS, torch.tensor([7, 7])])
    assert lovasz_softmax(probs, labels, ignore=7).item() == pytest.approx(HAND, rel=1e-12)


def test_present_vs_all_vs_list():
    probs = torch.tensor([[0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.7, 0.1, 0.2]], dtype=torch.float64)
    labels = torch.tensor([1, 1, 0])
    # class 1: errors (0.2, 0.6, 0.1) -> increments 1/2, 1/2, 0 -> 0.4
    # class 0: errors (0.1, 0.5, 0.3) -> increments 1/2, 1/2, 0 -> 0.4
    # class 2 (absent): every non-empty prefix has J = 1 -> only the largest error counts: 0.2
    assert lovasz_softmax(probs, labels, classes="present").item() == pytest.approx(0.4, rel=1e-12)
    assert lovasz_softmax(probs, labels, classes="all").item() == pytest.approx(1.0 / 3, rel=1e-12)
    assert lovasz_softmax(probs, labels, classes=[2]).item() == pytest.approx(0.2, rel=1e-12)
    with pytest.raises(ValueError):
        lovasz_softmax(probs, labels, classes="some")


def test_all_ignored_lovasz_is_zero():
    probs = PROBS.clone().requires_grad_()
    loss = lovasz_softmax(probs, torch.tensor([3, 3, 3]), ignore=3)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(probs.grad, torch.zeros_like(probs))


# Stage-2 toy: class 0 = ignore; probabilities (softmax of their logs) over classes 0, 1, 2.
SEG_PROBS = torch.tensor([[0.1, 0.1, 0.8], [0.1, 0.5, 0.4], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]], dtype=torch.float64)
SEG_LABELS = torch.tensor([2, 2, 1, 0])  # the last voxel is unlabelled
SEG_CE = -(math.log(0.8) + math.log(0.4) + math.log(0.7)) / 3
SEG_LOVASZ = 0.4  # class 2: errors (0.2, 0.6, 0.1); class 1: errors (0.1, 0.5, 0.3); class 0 not present


def test_segmentation_loss_hand_value_and_sum_of_parts():
    out = SegmentationLoss()(SEG_PROBS.log(), SEG_LABELS)
    assert out["ce"].item() == pytest.approx(SEG_CE, rel=1e-12)
    assert out["lovasz"].item() == pytest.approx(SEG_LOVASZ, rel=1e-12)
    assert out["total"].item() == pytest.approx(out["ce"].item() + out["lovasz"].item(), rel=1e-15)


def test_segmentation_loss_without_lovasz_and_with_class_weights():
    out = SegmentationLoss(lovasz=False)(SEG_PROBS.log(), SEG_LABELS)
    assert out["total"].item() == pytest.approx(SEG_CE, rel=1e-12) and out["lovasz"].item() == 0.0
    weighted = SegmentationLoss(lovasz=False, class_weights=torch.tensor([0.0, 1.0, 3.0]))(SEG_PROBS.log(), SEG_LABELS)
    expected = -(3 * math.log(0.8) + 3 * math.log(0.4) + math.log(0.7)) / 7
    assert weighted["ce"].item() == pytest.approx(expected, rel=1e-12)


def test_segmentation_loss_all_ignored_is_zero_and_backward_works():
    logits = torch.randn(5, 3, requires_grad=True)
    out = SegmentationLoss()(logits, torch.zeros(5, dtype=torch.long))
    assert all(v.item() == 0.0 for v in out.values())
    out["total"].backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_gradcheck_segmentation_loss():
    torch.manual_seed(0)
    logits = torch.randn(12, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 1, 1, 0, 2, 3, 3, 1, 2])
    loss = SegmentationLoss()
    assert torch.autograd.gradcheck(lambda x: loss(x, labels)["total"], (logits,))


def test_bad_shapes_are_refused_with_the_shapes():
    with pytest.raises(ValueError, match=r"lovasz_softmax expects probs \(V, C\) and labels \(V,\), got \(3, 2, 1\) "
                                         r"and \(3,\)"):
        lovasz_softmax(PROBS[:, :, None], LABELS)
    with pytest.raises(ValueError, match=r"got \(3, 2\) and \(2,\)"):
        lovasz_softmax(PROBS, LABELS[:2])
    with pytest.raises(ValueError, match=r"got \(3, 2\) and \(3, 1\)"):
        lovasz_softmax(PROBS, LABELS[:, None])
    with pytest.raises(ValueError, match="classes must be 'present', 'all' or a list of class ids, got 'some'"):
        lovasz_softmax(PROBS, LABELS, classes="some")


def test_single_voxel_and_empty_class_list():
    # one voxel of class 1 with p = 0.3: the only prefix has J = 1 - 0/1 -> loss = error 0.7
    probs = torch.tensor([[0.7, 0.3]], dtype=torch.float64)
    assert lovasz_softmax(probs, torch.tensor([1])).item() == pytest.approx(0.7, rel=1e-12)
    # no class to average over: 0 (not the sum of the probabilities)
    assert lovasz_softmax(PROBS, LABELS, classes=[]).item() == 0.0


def test_lovasz_grad_longer_chain():
    # gt (0, 1, 1, 0, 1), |class| = 3: J after each prefix = 1 - 3/4, 1 - 2/4, 1 - 1/4, 1 - 1/5, 1 - 0/5
    g = lovasz_grad(torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64))
    j = [1 / 4, 2 / 4, 3 / 4, 4 / 5, 1.0]
    torch.testing.assert_close(g, torch.tensor([j[0]] + [j[i] - j[i - 1] for i in range(1, 5)], dtype=torch.float64))
