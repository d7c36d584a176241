"""A weak teacher from 3D boxes: each box's silhouette in the image becomes a mask of its class.

It needs no model, so it runs on any frame that carries boxes (the shipped real nuScenes sample):
boxes are drawn far to near so nearer objects cover farther ones; pixels outside every box get no mask.
Only object classes are covered, so its pseudo-labels are sparse but precise; it is the teacher the
real-sample demo and tests use, never a stand-in for an open-vocabulary model's accuracy.
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from ..data.frame import CameraView, Frame
from ..errors import DataError
from ..geometry.boxes import box_corners
from ..geometry.transforms import apply
from ..vocab import ClassDictionary
from .format import TeacherImage


class BoxTeacher:
    name = "boxes"
    feature_dim = None

    def __init__(self, dictionary: ClassDictionary, min_depth: float = 0.5):
        self.dictionary = dictionary
        self.num_prompts = dictionary.num_prompts
        self.min_depth = min_depth

    def text_embeddings(self) -> None:
        return None

    def predict(self, camera: CameraView, frame: Optional[Frame] = None) -> TeacherImage:
        if frame is None or frame.boxes is None or frame.box_raw_classes is None:
            where = f"sample {frame.token}" if frame is not None else f"image {camera.token} (no frame given)"
            raise DataError(f"{where} has no 3D boxes for the box teacher")
        mask_ids = np.zeros((camera.height, camera.width), np.uint16)
        prompts: list[int] = []
        prompt_to_mask: dict[int, int] = {}
        # Far to near: nearer silhouettes are painted last and win.
        centres = apply(camera.lidar_to_camera, frame.boxes[:, :3])
        for b in np.argsort(-centres[:, 2]):
            raw = int(frame.box_raw_classes[b])
            if self.dictionary.raw_to_eval_map.get(raw, 0) == 0:
                continue  # boxes of ignored classes teach nothing
            corners = apply(camera.lidar_to_camera, box_corners(frame.boxes[b]))
            if (corners[:, 2] <= self.min_depth).any():
                continue  # partly behind the camera: its silhouette is unbounded
            uv = corners @ camera.intrinsics.T
            uv = uv[:, :2] / uv[:, 2:3]
            if uv[:, 0].max() < 0 or uv[:, 1].max() < 0 or uv[:, 0].min() >= camera.width or uv[:, 1].min() >= camera.height:
                continue
            prompt = self.dictionary.category_of_raw(raw).first_prompt
            if prompt not in prompt_to_mask:  # one mask per prompt, like CAT-Seg / SAN class regions
                prompts.append(prompt)
                prompt_to_mask[prompt] = len(prompts)
            hull = cv2.convexHull(np.round(uv).astype(np.int32))
            cv2.fillConvexPoly(mask_ids, hull, int(prompt_to_mask[prompt]))
        present = np.unique(mask_ids[mask_ids > 0])
        # Renumber so every described mask is present in the map (a later box may cover an earlier one).
        remap = np.zeros(len(prompts) + 1, np.uint16)
        remap[present] = np.arange(1, len(present) + 1)
        kept = np.asarray(prompts, np.int32)[present - 1] if len(present) else np.zeros(0, np.int32)
        return TeacherImage(mask_ids=remap[mask_ids], prompt_ids=kept, scores=np.ones(len(kept), np.float32))
