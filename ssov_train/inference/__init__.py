"""Inference on one scan, shared by the ROS node, export parity checks, benchmarks and text queries.

* :class:`ModelSpec` — the model-bound parameters (classes, palette, voxelization, input fields, feature
  dimension) that travel with every model file, whatever its format;
* :class:`Backend` — runs the network on one voxelized scan; implementations register a name with
  :func:`register_backend` (``torch`` here, in :mod:`.torch_backend`; ``onnxruntime`` / ``tensorrt`` come from
  ``ssov_export``); each is imported when first asked for, so running an exported package needs no torch;
* :class:`Segmenter` — points in, per-point labels / scores out: input features, the one voxelizer, the
  backend, class-0 suppression, softmax, optional AFI, with per-stage timings; its halves ``infer`` (network)
  and ``refine`` (AFI) compose to ``segment``;
* :class:`PipelinedSegmenter` — ``refine`` of frame t on a worker thread while ``infer`` runs frame t+1.
"""

from .backends import Backend, available_backends, open_backend, register_backend
from .pipeline import FrameOutcome, PipelinedSegmenter
from .segmenter import Inferred, Segmentation, Segmenter
from .spec import ModelSpec

__all__ = ["Backend", "FrameOutcome", "Inferred", "ModelSpec", "PipelinedSegmenter", "Segmentation",
           "Segmenter", "available_backends", "open_backend", "register_backend"]
