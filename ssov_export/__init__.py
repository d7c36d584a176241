"""export: an ssov checkpoint -> a deployable model package (ONNX + sidecar) and TensorRT engines.

* ``kernel_maps`` — the neighbourhood maps (rulebooks) of one scan, the graph's index inputs (numpy);
* ``onnx_graph`` — the MinkUNet as ONNX with kernel maps as inputs; ``onnx_export`` — checkpoint -> package
  with the spconv parity check; ``package`` — the package layout, sidecar and sha256 check;
* ``onnx_backend`` / ``tensorrt_backend`` — the ``onnxruntime`` and ``tensorrt`` inference backends;
* ``engine`` — TensorRT cache key, profiles, rebuild decisions, ONNX readiness (plain Python); ``trt_api`` —
  the only module that calls TensorRT;
* ``cli`` — ``ssov-export onnx | check | engine``.
"""
