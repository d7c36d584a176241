"""Is a scan's intensity on the scale the model was trained on?  ROS-free checks for live inputs.

nuScenes and the synthetic world store intensity on 0..255 and SemanticKITTI remission on 0..1 (see
``ssov_train/data``): a model trained on one and fed the other still runs, but its labels change a lot.  A sensor's
intensity is judged by its 99th percentile (robust to a few saturated returns) over several frames in a row
(one empty or odd frame is no evidence).

Only raw-intensity models (input ``intensity`` / ``intensity+1``) need this: a model with ``normalized_intensity``
(:mod:`ssov_train.features`) divides each cloud by its own 99th percentile, so no scale can be wrong, and the node
runs no range check for it.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

# Upper end of the training intensities per class vocabulary; any other vocabulary: 0..255 (nuScenes convention)
TRAINING_INTENSITY_MAX = {"semantickitti": 1.0}
DEFAULT_INTENSITY_MAX = 255.0
# A percentile this far below or above the training maximum is another scale (0..1 against 0..255 is a factor
# 255; real nuScenes and synthetic sweeps have a 99th percentile of 60..215)
TOO_SMALL, TOO_LARGE = 1 / 50, 2.0


def training_intensity_max(vocabulary: str) -> float:
    """The upper end of the intensities a model with this class vocabulary was trained on."""
    return TRAINING_INTENSITY_MAX.get(vocabulary, DEFAULT_INTENSITY_MAX)


def intensity_range_problem(intensity: np.ndarray, expected_max: float) -> str:
    """Why these intensities do not look like 0..``expected_max``, or "" when they do (non-finite ones ignored)."""
    values = np.asarray(intensity, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "no finite intensity"
    low, high = np.percentile(values, [1, 99])
    if low < 0:
        return f"negative intensities (1st percentile {low:.3g}); the model was trained on 0..{expected_max:g}"
    if high == 0:
        return f"every intensity is 0; the model was trained on 0..{expected_max:g}"
    if high < TOO_SMALL * expected_max or high > TOO_LARGE * expected_max:
        return (f"intensities up to {high:.3g} (99th percentile) but the model was trained on 0..{expected_max:g}: "
                f"scale them by about {expected_max / high:.3g}")
    return ""


class IntensityRangeCheck:
    """Tells when ``frames`` scans in a row had intensities unlike the training range.

    :meth:`update` returns the problem text once per run of bad frames (when the run reaches ``frames``);
    :attr:`problem` holds it while the run lasts and is "" again after a frame that looks right.
    """

    def __init__(self, expected_max: float, frames: int = 5):
        if not expected_max > 0 or frames < 1:
            raise ValueError(f"need expected_max > 0 and frames >= 1, got {expected_max}, {frames}")
        self.expected_max, self.frames = float(expected_max), int(frames)
        self.problem = ""
        self._run = 0

    def update(self, intensity: np.ndarray) -> Optional[str]:
        problem = intensity_range_problem(intensity, self.expected_max)
        if not problem:
            self._run, self.problem = 0, ""
            return None
        self._run += 1
        if self._run < self.frames:
            return None
        first = not self.problem
        self.problem = problem
        return problem if first else None
