"""Tri-Modal Pre-training (TMP) loss: superpoints x teacher mask features x teacher text embeddings.

Follows method.md §3.  A superpoint is one (camera, mask) of a scan; its 3D feature k_g is the mean of
the (unit-norm) point features over all (point, pixel) pairings of the mask, divided by count + 1e-6
and, as in the reference, not re-normalised.  Two contrastive terms, weighted 0.5 / 0.5:

* superpixel-superpoint InfoNCE between k and the re-L2-normalised mask features q (positives on the
  diagonal, every other superpoint of the batch is a negative);
* text-superpoint soft cross-entropy between k and all P prompt embeddings, with a target spread over
  the prompts of the superpoint's dictionary category (:func:`text_targets`).

Two options fix weaknesses listed in method.md §10 and default to the reference behaviour:
``renormalize_superpoints`` (L2-normalise k before the tau = 0.07 logits) and
``mask_same_category_negatives`` (superpoints of the same dictionary category are not negatives of each
other in the InfoNCE; CAT-Seg/SAN masks are whole-class regions, so such pairs are mostly false negatives).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DataError

if TYPE_CHECKING:  # only for annotations; keeps the loss module free of the data-pipeline imports
    from ..superpoints import SuperpointSample

POOL_EPS = 1e-6  # the reference divides pooled sums by count + 1e-6


def pool_superpoints(point_features: Tensor, pair_point: Tensor, pair_superpoint: Tensor, num_superpoints: int,
                     renormalize: bool = False) -> Tensor:
    """(S, D) mean of ``point_features[pair_point]`` per superpoint, over pairings (duplicates count twice).

    Scatter-add instead of the reference's sparse one-hot matmul: same sums, no (S, M) index structure.
    Superpoints without a pairing come out as zero rows.  ``renormalize`` L2-normalises each row (a zero
    row stays zero).
    """
    pair_point, pair_superpoint = pair_point.long(), pair_superpoint.long()
    d = point_features.shape[1]
    sums = point_features.new_zeros((num_superpoints, d)).index_add(0, pair_superpoint, point_features[pair_point])
    counts = point_features.new_zeros(num_superpoints).index_add(
        0, pair_superpoint, point_features.new_ones(pair_superpoint.shape[0]))
    k = sums / (counts[:, None] + POOL_EPS)
    return F.normalize(k, dim=1) if renormalize else k


def superpixel_superpoint_loss(k: Tensor, q: Tensor, tau: float = 0.07,
                               same_category_mask: Optional[Tensor] = None) -> Tensor:
    """InfoNCE CE(k q^T / tau, diag): superpoint g must pick its own mask feature among the batch's masks.

    ``same_category_mask`` (S, S) bool, True where two superpoints share a dictionary category: those
    off-diagonal logits are set to -inf so they are not negatives (the positive is never masked).
    """
    logits = k @ q.T / tau
    if same_category_mask is not None:
        eye = torch.eye(k.shape[0], dtype=torch.bool, device=k.device)
        logits = logits.masked_fill(same_category_mask.to(k.device) & ~eye, float("-inf"))
    return F.cross_entropy(logits, torch.arange(k.shape[0], device=k.device))


def text_targets(text_embeddings: Tensor, same_category: Union[Tensor, np.ndarray], alpha_onehot: float = 0.2,
                 alpha_text: float = 0.8) -> Tensor:
    """(P, P): row l is the soft target over prompts for a superpoint whose mask was labelled prompt l.

    y(c) proportional to alpha_onehot * [c = l] + alpha_text * max(cos(t_l, t_c), 0) * [cat(c) = cat(l)],
    row-normalised (power 1, no softmax).  The reference uses the cosine as is; a negative same-category
    cosine would give a negative target probability, so it is clamped at 0 here (CLIP text embeddings of
    synonyms have clearly positive cosines, so this changes nothing in practice).  Rows never sum to 0:
    the diagonal holds alpha_onehot + alpha_text.
    """
    t = F.normalize(text_embeddings.float(), dim=1)
    same = torch.as_tensor(same_category, dtype=torch.bool, device=t.device)
    if same.shape != (t.shape[0], t.shape[0]):
        raise ValueError(f"same_category must be ({t.shape[0]}, {t.shape[0]}), got {tuple(same.shape)}")
    y = alpha_onehot * torch.eye(t.shape[0], device=t.device) + alpha_text * (t @ t.T).clamp_min(0) * same
    return y / y.sum(dim=1, keepdim=True)


def text_superpoint_loss(k: Tensor, prompts: Tensor, text_embeddings: Tensor, targets: Tensor,
                         tau: float = 0.07) -> Tensor:
    """Soft CE of the logits k T^T / tau over all prompts against ``targets[prompts]`` (mean over superpoints).

    ``text_embeddings`` (P, D) unit-norm; ``targets`` (P, P) from :func:`text_targets`.
    """
    logits = k @ text_embeddings.T / tau
    return F.cross_entropy(logits, targets[prompts.long()])


@dataclass
class TMPBatch:
    """Pairings and superpoints of several scans, with ids valid across the batch.

    ``pair_point`` indexes rows of the batched point (or voxel) feature matrix; ``pair_superpoint``
    indexes the superpoint arrays, which hold only superpoints with at least one pairing.
    """

    pair_point: Tensor  # (M,) long
    pair_superpoint: Tensor  # (M,) long
    superpoint_prompt: Tensor  # (S,) long
    superpoint_feature: Tensor  # (S, D) float32 teacher mask feature (not normalised)
    superpoint_scan: Tensor  # (S,) long index of the scan in the batch

    @property
    def num_superpoints(self) -> int:
        return int(self.superpoint_prompt.shape[0])

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "TMPBatch":
        return TMPBatch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    def pin_memory(self) -> "TMPBatch":
        return TMPBatch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})


def batch_superpoints(samples: Sequence[SuperpointSample],
                      point_rows: Optional[Sequence[np.ndarray]] = None) -> TMPBatch:
    """Concatenate several scans' superpoint samples into one :class:`TMPBatch`.

    Superpoint ids are per scan, so they are offset; superpoints left without a pairing are dropped and
    the ids compacted.  ``point_rows[i]`` (N_i,) maps point j of scan i to its row in the batched feature
    matrix, -1 for points not in the batch (cropped away, or mapped to voxels by the caller); by default
    the scans' points are stacked in order.
    """
    if not samples:
        raise ValueError("batch_superpoints needs at least one sample")
    if point_rows is not None and len(point_rows) != len(samples):
        raise ValueError(f"point_rows has {len(point_rows)} entries for {len(samples)} samples")
    rows_out, sp_out, prompt_out, feat_out, scan_out = [], [], [], [], []
    point_offset = sp_offset = 0
    for i, s in enumerate(samples):
        if s.superpoint_feature is None:
            raise DataError(f"superpoints of sample {s.token} have no mask features; TMP needs a teacher that "
                            "stores them")
        if point_rows is None:
            rows = s.pair_point.astype(np.int64) + point_offset
        else:
            if len(point_rows[i]) != s.num_points:
                raise ValueError(f"point_rows[{i}] has {len(point_rows[i])} entries, sample {s.token} has "
                                 f"{s.num_points} points")
            rows = np.asarray(point_rows[i], dtype=np.int64)[s.pair_point]
        keep = rows >= 0
        sp = s.pair_superpoint[keep].astype(np.int64)
        used = np.unique(sp)
        remap = np.full(s.num_superpoints, -1, np.int64)
        remap[used] = np.arange(len(used)) + sp_offset
        rows_out.append(rows[keep])
        sp_out.append(remap[sp])
        prompt_out.append(s.superpoint_prompt[used].astype(np.int64))
        feat_out.append(s.superpoint_feature[used].astype(np.float32))
        scan_out.append(np.full(len(used), i, np.int64))
        point_offset += s.num_points
        sp_offset += len(used)
    return TMPBatch(pair_point=torch.from_numpy(np.concatenate(rows_out)),
                    pair_superpoint=torch.from_numpy(np.concatenate(sp_out)),
                    superpoint_prompt=torch.from_numpy(np.concatenate(prompt_out)),
                    superpoint_feature=torch.from_numpy(np.concatenate(feat_out)),
                    superpoint_scan=torch.from_numpy(np.concatenate(scan_out)))


class TMPLoss(nn.Module):
    """L = alpha_image * L_IP + alpha_text * L_TP; returns ``{'total', 'superpixel_superpoint', 'text_superpoint'}``
    (the parts unweighted).

    text_embeddings (P, D): the teacher's prompt embeddings (re-normalised here, as the reference does);
    same_category (P, P) bool: ``ClassDictionary.same_category``.
    """

    def __init__(self, text_embeddings: Tensor, same_category: Union[Tensor, np.ndarray], tau: float = 0.07,
                 renormalize_superpoints: bool = False, mask_same_category_negatives: bool = False,
                 alpha_image: float = 0.5, alpha_text: float = 0.5):
        super().__init__()
        self.tau = tau
        self.renormalize_superpoints = renormalize_superpoints
        self.mask_same_category_negatives = mask_same_category_negatives
        self.alpha_image = alpha_image
        self.alpha_text = alpha_text
        text = F.normalize(torch.as_tensor(text_embeddings).float(), dim=1)
        self.register_buffer("text_embeddings", text)
        self.register_buffer("same_category", torch.as_tensor(same_category, dtype=torch.bool))
        self.register_buffer("targets", text_targets(text, self.same_category))

    def forward(self, point_features: Tensor, batch: TMPBatch) -> dict[str, Tensor]:
        """point_features (N, D): unit-norm network outputs, rows indexed by ``batch.pair_point``.

        Superpoints without a pairing are skipped (as the reference keeps only non-empty ones); with none
        left every loss is 0 with the graph kept.
        """
        s = batch.num_superpoints
        k = pool_superpoints(point_features, batch.pair_point, batch.pair_superpoint, s, self.renormalize_superpoints)
        prompts, feats = batch.superpoint_prompt.long(), batch.superpoint_feature
        nonempty = torch.bincount(batch.pair_superpoint.long(), minlength=s) > 0
        if not bool(nonempty.all()):
            k, prompts, feats = k[nonempty], prompts[nonempty], feats[nonempty]
        if k.shape[0] == 0:
            zero = point_features.sum() * 0.0
            return {"total": zero, "superpixel_superpoint": zero, "text_superpoint": zero}
        q = F.normalize(feats.to(k.dtype), dim=1)
        mask = self.same_category[prompts][:, prompts] if self.mask_same_category_negatives else None
        l_ip = superpixel_superpoint_loss(k, q, self.tau, mask)
        l_tp = text_superpoint_loss(k, prompts, self.text_embeddings.to(k.dtype), self.targets.to(k.dtype), self.tau)
        return {"total": self.alpha_image * l_ip + self.alpha_text * l_tp,
                "superpixel_superpoint": l_ip, "text_superpoint": l_tp}
