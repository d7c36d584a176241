"""Training stage configs and what each stage trains: TMP pre-training, annotation-free distillation, downstream
finetuning / linear probing, and evaluation of a checkpoint.

One YAML file (``config/pretrain_*.yaml``, ``config/annotation_free_*.yaml``, ``config/semseg_*.yaml``) is one
:class:`TrainConfig`; its defaults are the reference's hyper-parameters (method.md §3, §4, §7).  The model's
``out_channels`` and ``normalize_features`` follow from the stage (teacher feature dim + L2 norm for TMP, the
dictionary's classes otherwise), so they are not set in the YAML.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..config import to_dict
from ..data import DatasetConfig, open_dataset
from ..device import check_device_name, resolve_device
from ..errors import ConfigError, DataError
from ..features import InputFeature, IntensityNormalization, feature_channels
from ..geometry.voxelize import VoxelConfig
from ..inference.segmenter import AFI_INPUTS, IGNORE_LOGIT
from ..losses import SegmentationLoss, TMPLoss
from ..models import MinkUNet, MinkUNetConfig
from ..pipeline import TeacherConfig
from ..vocab import ClassDictionary, load_dictionary
from .checkpoint import check_expected, load_checkpoint, load_model, model_label
from .data import (AugmentConfig, ScanDataset, VoxelBatch, collate_scans, hold_out_scenes, skip_tokens,
                   superpoint_tokens)

Stage = Literal["pretrain", "annotation_free", "downstream"]
# What AFI refines: the predicted labels as one-hot vectors (the reference) or the softmax probabilities
AFIInput = Literal["labels", "probabilities"]
HEAD_PREFIX = "final."  # the 1x1 classifier / projection head of MinkUNet


@dataclass
class OptimConfig:
    """SGD + cosine annealing stepped per epoch.  ``batch_size`` is per process (the reference TMP: 4 GPUs x 1
    scan); ``lr_head`` (if set) is the learning rate of the head, ``lr`` that of the rest."""

    epochs: int = 40
    batch_size: int = 4
    lr: float = 0.5
    lr_head: Optional[float] = None
    momentum: float = 0.9
    dampening: float = 0.1
    weight_decay: float = 1e-4
    num_workers: int = 0
    max_steps_per_epoch: Optional[int] = None  # cap for smoke runs; None = the whole split

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.num_workers < 0:
            raise ValueError("optim.epochs and optim.batch_size must be >= 1, optim.num_workers >= 0")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ValueError("optim.max_steps_per_epoch must be >= 1 (or null)")


@dataclass
class TMPConfig:
    """TMP loss (method.md §3); the two booleans are the §10 fixes, off = reference."""

    tau: float = 0.07
    alpha_image: float = 0.5
    alpha_text: float = 0.5
    renormalize_superpoints: bool = False
    mask_same_category_negatives: bool = False


@dataclass
class TrainConfig:
    stage: Stage
    dataset: DatasetConfig  # dataset.split is the training split
    output: Path  # run directory: checkpoints, metrics.csv, TensorBoard events
    vocabulary: str = "nuscenes"
    superpoints: Optional[Path] = None  # `ssov-train superpoints` output (pretrain, annotation_free)
    teacher: Optional[TeacherConfig] = None  # the teacher outputs, for their text embeddings (pretrain)
    # Per-epoch validation (no gradients, logged as val/*; the best epoch is kept as best.pt): mIoU on ground
    # truth of this split (monitoring only, method.md §10); for pretrain, the TMP losses on its superpoints.
    val_split: Optional[str] = None
    # pretrain only: scenes of the training split held out of training and validated on (TMP losses), as
    # SLidR / UOV do: "slidr" = SLidR's 100 held-out nuScenes train scenes (method.md §3), or scene names.
    holdout_scenes: Optional[Union[Literal["slidr"], list[str]]] = None
    eval_split: str = "val"  # split of `ssov-train evaluate`
    dataset_skip_step: int = 1  # keep every k-th scene (nuScenes format) / scan (KITTI) of the training split
    label_rule: Literal["majority", "first"] = "majority"  # voxel label from its points; first = reference
    feature: InputFeature = "intensity"
    # per-cloud normalisation of feature "normalized_intensity" (stored in the model file; unused otherwise)
    intensity_normalization: IntensityNormalization = field(default_factory=IntensityNormalization)
    voxel: VoxelConfig = field(default_factory=VoxelConfig)
    model: MinkUNetConfig = field(default_factory=MinkUNetConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    tmp: TMPConfig = field(default_factory=TMPConfig)
    lovasz: bool = True  # segmentation loss = CE + Lovasz-softmax (reference) or CE only
    freeze_layers: bool = False  # linear probe: only the head trains, BN statistics stay frozen
    seed: int = 0
    # epoch_NNN.pt files kept in the run directory: the newest N (0: none), null = every epoch's.
    # last.pt (resume) and best.pt (best validation epoch) are always kept.
    keep_checkpoints: Optional[int] = None
    # Where the network trains and evaluates: auto (CUDA when torch sees a GPU and spconv is a CUDA build, else
    # the CPU, saying why), cpu, cuda (under torchrun: cuda:<LOCAL_RANK>) or cuda:N. A resumed run may change it.
    device: str = "auto"
    amp: bool = False  # mixed precision on CUDA (fp16 autocast, scaled gradients); the CPU always runs fp32

    def check(self) -> None:
        check_device_name(self.device)
        if self.stage in ("pretrain", "annotation_free") and self.superpoints is None:
            raise ValueError(f"stage {self.stage} needs `superpoints:` (the `ssov-train superpoints` output)")
        if self.stage == "pretrain" and self.teacher is None:
            raise ValueError("stage pretrain needs `teacher:` (the teacher output directory, for text embeddings)")
        if self.freeze_layers and self.stage != "downstream":
            raise ValueError("freeze_layers (linear probing) is a downstream option")
        if self.dataset_skip_step < 1:
            raise ValueError("dataset_skip_step must be >= 1")
        if self.holdout_scenes is not None and self.stage != "pretrain":
            raise ValueError("holdout_scenes is a pretrain option (other stages validate with val_split)")
        if self.holdout_scenes is not None and self.val_split:
            raise ValueError("set either holdout_scenes or val_split, not both")
        if isinstance(self.holdout_scenes, list) and not self.holdout_scenes:
            raise ValueError("holdout_scenes: empty list")
        self.intensity_normalization.check()
        if self.keep_checkpoints is not None and self.keep_checkpoints < 0:
            raise ValueError("keep_checkpoints must be >= 0 (or null: keep every epoch's checkpoint)")


def input_normalization(cfg: TrainConfig) -> Optional[dict]:
    """The checkpoint's ``input_normalization``: set for a normalised input feature, None otherwise."""
    return cfg.intensity_normalization.to_dict() if cfg.feature == "normalized_intensity" else None


def checkpoint_expectations(cfg: TrainConfig, dictionary: Optional[ClassDictionary] = None) -> dict[str, Any]:
    """The model-bound values a checkpoint must share with a run built from ``cfg``."""
    expect = {"voxel": to_dict(cfg.voxel), "input_fields": [cfg.feature], "model.arch": cfg.model.arch,
              "model.width": cfg.model.width, "model.in_channels": feature_channels([cfg.feature])}
    if cfg.feature == "normalized_intensity":
        expect["input_normalization"] = input_normalization(cfg)
    if dictionary is not None:
        expect["class_names"] = dictionary.class_names
    return expect


def init_from_pretraining(model: nn.Module, path: Path, cfg: TrainConfig) -> tuple[list[str], list[str]]:
    """Load every shape-matching weight of a pre-trained checkpoint (method.md §4/§7); the head only when its
    shape matches and it is a classifier (a TMP head is a feature projection).  Returns (loaded, skipped)."""
    ckpt = load_checkpoint(path, checkpoint_expectations(cfg))
    source = ckpt["state_dict"]
    own = model.state_dict()
    load_head = ckpt.get("stage") != "pretrain"
    loaded, skipped = [], []
    for name, tensor in source.items():
        ok = name in own and own[name].shape == tensor.shape and (load_head or not name.startswith(HEAD_PREFIX))
        (loaded if ok else skipped).append(name)
    model.load_state_dict({k: source[k] for k in loaded}, strict=False)
    if not any(not n.startswith(HEAD_PREFIX) for n in loaded):
        raise ConfigError(f"{path}: no trunk weight matches this model")
    return loaded, skipped


@dataclass
class Task:
    """Everything one training stage needs besides the loop: data, model, loss, parameter groups and the
    metadata that goes into its checkpoints."""

    cfg: TrainConfig
    dictionary: ClassDictionary
    model: MinkUNet
    train_set: ScanDataset
    val_set: Optional[ScanDataset]
    criterion: nn.Module
    meta: dict  # model-bound checkpoint fields (see checkpoint.py)
    init_report: str = ""

    def losses(self, model: nn.Module, batch: VoxelBatch) -> dict[str, Tensor]:
        out = model(*batch.net_inputs()).float()  # the losses in fp32, also under mixed precision (a no-op else)
        if self.cfg.stage == "pretrain":
            return self.criterion(out, batch.tmp)
        return self.criterion(out, batch.labels)

    def param_groups(self) -> list[dict]:
        o = self.cfg.optim
        head = [p for n, p in self.model.named_parameters() if n.startswith(HEAD_PREFIX)]
        if self.cfg.freeze_layers:
            return [{"params": head, "lr": o.lr_head if o.lr_head is not None else o.lr}]
        trunk = [p for n, p in self.model.named_parameters() if not n.startswith(HEAD_PREFIX)]
        if o.lr_head is None:
            return [{"params": trunk + head, "lr": o.lr}]
        return [{"params": trunk, "lr": o.lr}, {"params": head, "lr": o.lr_head}]


def _text_embeddings(cfg: TrainConfig, dictionary: ClassDictionary) -> tuple[np.ndarray, str]:
    from ..teachers.format import open_teacher

    t = cfg.teacher
    teacher = open_teacher(t.format, t.root, num_prompts=dictionary.num_prompts, fcclip_features=t.fcclip_features)
    text = teacher.text_embeddings()
    if text is None:
        raise DataError(f"teacher outputs at {t.root} have no text embeddings; TMP needs them")
    if text.shape[0] != dictionary.num_prompts:
        raise DataError(f"teacher at {t.root} has {text.shape[0]} prompt embeddings, dictionary "
                        f"{dictionary.name} has {dictionary.num_prompts} prompts")
    return np.asarray(text, dtype=np.float32), teacher.name


def build_task(cfg: TrainConfig, pretraining_path: Optional[Path] = None) -> Task:
    """Open the data, build the model (seeded) and loss of ``cfg.stage``; initialise from ``pretraining_path``."""
    dictionary = load_dictionary(cfg.vocabulary)
    reader = open_dataset(cfg.dataset, dictionary)
    split = cfg.dataset.split
    common = {"voxel": cfg.voxel, "feature": cfg.feature, "label_rule": cfg.label_rule, "seed": cfg.seed,
              "normalization": cfg.intensity_normalization}
    in_channels = feature_channels([cfg.feature])  # the input feature fixes the stem's width
    meta: dict[str, Any] = {"class_names": dictionary.class_names, "palette": dictionary.palette.tolist(),
                            "vocabulary": dictionary.name, "feature_dim": None, "text_embeddings": None}
    val_set: Optional[ScanDataset] = None
    if cfg.stage == "pretrain":
        text, teacher_name = _text_embeddings(cfg, dictionary)
        model_cfg = dataclasses.replace(cfg.model, out_channels=int(text.shape[1]), normalize_features=True,
                                        in_channels=in_channels)
        tokens, val_tokens = superpoint_tokens(cfg.superpoints, split), None
        if cfg.holdout_scenes is not None:
            tokens, val_tokens = hold_out_scenes(tokens, cfg.holdout_scenes, reader, cfg.dataset.kind)
        elif cfg.val_split:
            val_tokens = superpoint_tokens(cfg.superpoints, cfg.val_split)
        train_set = ScanDataset(reader, tokens, label_source="superpoints",
                                superpoints_dir=cfg.superpoints, augment=cfg.augment, **common)
        if val_tokens:  # no augmentation: the same scans, the same losses every epoch
            val_set = ScanDataset(reader, val_tokens, label_source="superpoints", superpoints_dir=cfg.superpoints,
                                  **common)
        t = cfg.tmp
        criterion: nn.Module = TMPLoss(torch.from_numpy(text), dictionary.same_category, tau=t.tau,
                                       renormalize_superpoints=t.renormalize_superpoints,
                                       mask_same_category_negatives=t.mask_same_category_negatives,
                                       alpha_image=t.alpha_image, alpha_text=t.alpha_text)
        meta.update(feature_dim=int(text.shape[1]),
                    text_embeddings={"teacher": teacher_name, "root": str(cfg.teacher.root), "dim": int(text.shape[1]),
                                     "num_prompts": int(text.shape[0])})
    else:
        model_cfg = dataclasses.replace(cfg.model, out_channels=dictionary.num_classes, normalize_features=False,
                                        in_channels=in_channels)
        if cfg.stage == "annotation_free":
            tokens = superpoint_tokens(cfg.superpoints, split)
            label_source = "pseudo"
        else:
            tokens = reader.split_tokens(split)
            label_source = "gt"
        tokens = skip_tokens(tokens, cfg.dataset_skip_step, reader, cfg.dataset.kind)
        train_set = ScanDataset(reader, tokens, label_source=label_source, superpoints_dir=cfg.superpoints,
                                augment=cfg.augment, **common)
        criterion = SegmentationLoss(ignore_index=0, lovasz=cfg.lovasz)
    if not len(train_set):
        raise DataError(f"no training scans in split {split!r} of {cfg.dataset.root}")
    if cfg.val_split and cfg.stage != "pretrain":
        val_set = ScanDataset(reader, reader.split_tokens(cfg.val_split), label_source="gt", keep_points=True,
                              **common)
    torch.manual_seed(cfg.seed)  # every rank builds the same initial weights
    model = MinkUNet(model_cfg)
    report = ""
    if pretraining_path is not None:
        loaded, skipped = init_from_pretraining(model, Path(pretraining_path), cfg)
        report = f"initialised {len(loaded)} tensors from {pretraining_path} (skipped {len(skipped)}: {skipped[:4]})"
    if cfg.freeze_layers:
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(HEAD_PREFIX))
    meta.update(stage=cfg.stage, model=to_dict(model_cfg), voxel=to_dict(cfg.voxel), input_fields=[cfg.feature],
                input_normalization=input_normalization(cfg))
    return Task(cfg, dictionary, model, train_set, val_set, criterion, meta, report)


# ---- inference / evaluation ---------------------------------------------------------------------------

@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, with_probs: bool = False):
    """Yield ``(scan, point_predictions, point_probs or None)`` per scan: class-0 logit set to -1e6, argmax per
    voxel, broadcast to every point of the scan through ``point_to_voxel``.  The network runs on the device of
    its weights; predictions come back to the host."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in loader:
            logits = model(*batch.to(device, non_blocking=True).net_inputs()).float()
            logits[:, 0] = IGNORE_LOGIT
            voxel_pred = logits.argmax(1).cpu().numpy()
            voxel_probs = torch.softmax(logits, 1).cpu().numpy() if with_probs else None
            for i, scan in enumerate(batch.scans):
                rows = batch.scan_rows(i)
                probs = None if voxel_probs is None else voxel_probs[rows][scan.point_to_voxel]
                yield scan, voxel_pred[rows][scan.point_to_voxel], probs
    finally:
        model.train(was_training)


def eval_loader(dataset: ScanDataset, batch_size: int, num_workers: int, pin_memory: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate_scans, pin_memory=pin_memory)


def default_evaluation_dir(cfg: TrainConfig, model_path: Path, afi: bool = False,
                           afi_input: AFIInput = "labels") -> Path:
    """Where ``ssov-train evaluate`` writes without ``--out``: under the config's run directory (``runs/...``),
    never next to the model file, which may sit in a tracked folder such as ``models/``; one folder per model
    (:func:`model_label`: a run's last.pt with its run's name) and split, so evaluating several runs' last.pt,
    a best.pt and an exported package never overwrite each other."""
    name = re.sub(r"\.(ssovpkg|pt|onnx|engine)$", "", model_label(model_path))
    return Path(cfg.output) / ("eval_" + re.sub(r"[^A-Za-z0-9._-]+", "_", name) + f"_{cfg.eval_split}"
                               + (("_afi" if afi_input == "labels" else "_afi_probs") if afi else ""))


def run_evaluation(cfg: TrainConfig, checkpoint_path: Path, out_dir: Optional[Path] = None, afi: bool = False,
                   progress: bool = True, backend: str = "auto", afi_input: AFIInput = "labels") -> dict:
    """Evaluate a class model on ``cfg.eval_split`` over ALL points of every scan (method.md §7);
    writes metrics.json and figures into ``out_dir`` (default: :func:`default_evaluation_dir`).

    ``checkpoint_path`` is an ssov-checkpoint or an exported model package; ``backend`` names the
    ``ssov_train.inference`` backend (``auto``: batched spconv for a checkpoint, onnxruntime for a package).
    The model file describes itself: its network, voxel grid and input field come from the file (the
    checkpoint's fields or the package's sidecar), never from ``cfg.model`` / ``cfg.voxel`` / ``cfg.feature``;
    ``cfg`` gives the dataset, the vocabulary (the model's classes must be its classes), the split, the
    batch size and ``cfg.device``, where spconv runs a checkpoint (``auto``/``torch`` backends; a package runs
    where its backend runs).  With ``afi``, AFI is fed the predicted labels (one-hot, as the reference feeds it)
    or, with ``afi_input="probabilities"``, the softmax probabilities."""
    from ..evaluation.evaluate import EvaluationAccumulator, apply_afi
    from ..inference import ModelSpec, open_backend
    from ..inference.backends import default_backend
    from ..inference.segmenter import class_probs
    from ..jobs import progress_bar

    dictionary = load_dictionary(cfg.vocabulary)
    expect = {"class_names": dictionary.class_names}
    batched = backend == "auto" and default_backend(checkpoint_path) == "torch"
    spconv_model = batched or backend == "torch"
    device = resolve_device(cfg.device) if spconv_model else None  # a package runs where its backend runs
    if device is not None and progress:
        print(device.note, flush=True)
    if batched:
        model, ckpt = load_model(checkpoint_path, expect)  # weights read onto the CPU, whatever wrote them
        model.to(device.device)
        spec = ModelSpec.from_checkpoint(ckpt, str(checkpoint_path))
    else:  # one scan at a time through a named backend (the node's path)
        engine = open_backend(checkpoint_path, backend, **({"device": device.device} if device else {}))
        spec = engine.spec
        check_expected(spec.to_dict(), expect, str(checkpoint_path))

        def predict_scans(scans):
            for scan in scans:
                probs = class_probs(engine.run(scan.features, scan.coords, scan.spatial_shape))
                yield scan, probs.argmax(1)[scan.point_to_voxel], probs[scan.point_to_voxel]

    if not spec.has_classes:
        raise ConfigError(f"{checkpoint_path} is a TMP pre-training model (features, no classes); evaluate an "
                          "annotation-free or downstream model")
    if len(spec.input_fields) != 1:
        raise ConfigError(f"{checkpoint_path} takes the inputs {list(spec.input_fields)}; evaluation feeds one "
                          "per-point field")
    reader = open_dataset(cfg.dataset, dictionary)
    if afi_input not in AFI_INPUTS:
        raise ConfigError(f"AFI input {afi_input!r} is not one of {AFI_INPUTS}")
    dataset = ScanDataset(reader, reader.split_tokens(cfg.eval_split), spec.voxel, spec.input_fields[0],
                          label_source="gt", keep_points=True, normalization=spec.input_normalization)
    out_dir = Path(out_dir) if out_dir is not None else default_evaluation_dir(cfg, checkpoint_path, afi, afi_input)
    acc = EvaluationAccumulator(dictionary, out_dir)
    predictions = (predict(model, eval_loader(dataset, cfg.optim.batch_size, cfg.optim.num_workers,
                                              pin_memory=device.is_cuda), with_probs=True)
                   if batched else predict_scans(dataset))
    for scan, pred, probs in progress_bar(predictions, enabled=progress, total=len(dataset), desc="evaluate",
                                          unit="scan"):
        if afi:
            pred = apply_afi(scan.points, pred if afi_input == "labels" else probs, dictionary)
        acc.add_scan(scan.token, scan.points, scan.point_labels, pred, probs=None if afi else probs)
    title = (f"{spec.stage} {model_label(checkpoint_path)} on {cfg.eval_split}"
             + (f" + AFI ({afi_input})" if afi else ""))
    return acc.finalize(title)

