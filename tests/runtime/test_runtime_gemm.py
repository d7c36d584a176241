"""The cpu-gemm backend in the deployable runtime: with torch and scipy unimportable it runs an exported package
on the OpenBLAS bundled in numpy's wheel, with the same logits as in the full environment (scipy's OpenBLAS)."""

from __future__ import annotations

import numpy as np
from runtime_blocker import blocked
from runtime_scenario import REPO

DEMO = REPO / "models" / "ssov_synthetic_minkunet34c_w025.pt"


def test_cpu_gemm_runs_a_package_without_torch_and_scipy(tmp_path):
    from ssov_export.onnx_export import export_package, sample_scan
    from ssov_train.inference import open_backend

    package, _ = export_package(DEMO, tmp_path / "demo.ssovpkg", check=False)
    full = open_backend(package, "cpu-gemm")
    assert "scipy" in full.describe()
    vox = sample_scan(full.spec)
    reference = full.run(vox.features, vox.coords, vox.spatial_shape)
    with blocked():
        from ssov_train.inference import open_backend as runtime_open

        slim = runtime_open(package, "cpu-gemm")
        assert "numpy's OpenBLAS" in slim.describe()
        out = slim.run(vox.features, vox.coords, vox.spatial_shape)
    np.testing.assert_allclose(out, reference, atol=1e-5)
