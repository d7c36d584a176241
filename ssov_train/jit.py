"""The numba settings of every compiled kernel (AFI, the voxel sampler, the k-d tree), in one place.

* ``cache=True``: compiled once per machine (~8 s for AFI's kernels), then loaded from ``__pycache__``;
* ``nogil=True``: kernels release the GIL, so the ROS node's pipeline overlaps AFI with the network;
* ``error_model="numpy"``: no zero-division checks in inner loops (IEEE results, as numpy gives);
* no ``parallel``: every budget is per core, and the node decides how many cores it uses.

Caveat: numba's cache key is a kernel's own source file and signature, not these options. After editing
them, delete the ``__pycache__`` folders of ssov_train (or touch the kernels' files) so nothing stale loads.

Inner loops are written out: in numba a helper that takes arrays pays reference counting on every call (~5x
the work of a top-k insertion); helpers on scalars (:data:`inline`) cost nothing.
"""

import numba

jit = numba.njit(cache=True, nogil=True, error_model="numpy")

# For kernels whose float sums may be reordered, so they vectorise: a few ulps of difference, deterministic on
# one machine. No "nnan" / "ninf": the inputs are checked finite, and the code must stay correct if they are not.
fast_jit = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "nsz", "arcp"})

inline = numba.njit(cache=True, inline="always")
