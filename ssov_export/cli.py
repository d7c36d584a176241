"""``ssov-export``: model packages (ONNX + sidecar) and TensorRT engines.

    ssov-export onnx --checkpoint models/ssov_synthetic_minkunet34c_w025.pt --out models/demo.ssovpkg
    ssov-export check models/demo.ssovpkg            # sidecar, sha256, TensorRT readiness, parity on the sample
    ssov-export engine models/demo.ssovpkg --fp16 [--build-only]   # on the Jetson / GPU machine
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssov_train.errors import ConfigError, DataError

from .engine import SENSOR_MAX_POINTS


def _profile(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected MIN,OPT,MAX voxels, got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def cmd_onnx(args) -> int:
    from .onnx_export import export_package

    from .package import load_package

    out, parity = export_package(args.checkpoint, args.out, profile=args.profile, check=not args.no_check,
                                 text_embeddings=args.text_embeddings, max_voxels=args.max_voxels)
    pkg = load_package(out, verify=False)
    table = pkg.text_embeddings_path
    print(f"wrote {out}/model.onnx (portable graph) + model_cpu.onnx (cpu graph) + weights_cpu.npz (cpu-gemm) + "
          f"model.yaml" + (f" + {table.name}" if table is not None else ""))
    if not pkg.spec.has_classes and table is None:
        print("note: no text embeddings in the package (the checkpoint's teacher outputs are not on disk): text "
              "queries will need --embeddings or --text-encoder; pass --text-embeddings to include them")
    if parity is not None:  # the portable graph's parity is checked too and recorded in model.yaml
        print(f"parity vs spconv on the real sample (cpu graph), {parity}")
    return 0


def cmd_check(args) -> int:
    import onnx

    from .engine import check_onnx
    from ssov_train.training.checkpoint import load_model

    from .onnx_export import check_parity, sample_scan, spconv_logits
    from .package import load_package

    pkg = load_package(args.package)
    # class 0 is "ignore" (never predicted): the evaluation classes are the others, as everywhere else
    classes = (f"{pkg.spec.num_classes - 1} classes + ignore" if pkg.spec.has_classes
               else "feature model (no classes)")
    print(f"{pkg.root}: sidecar ok, sha256 {pkg.onnx_sha256[:16]}... ok, {classes}, "
          f"voxel {pkg.spec.voxel.mode} {pkg.spec.voxel.size}, profile {pkg.profile['num_voxels']}")
    problems = check_onnx(onnx.load(str(pkg.onnx_path)))
    print("TensorRT readiness: " + ("ok (opset, ops, int32 index inputs, named dynamic axes)" if not problems
                                    else "; ".join(problems)))
    if args.checkpoint:
        model, _ = load_model(args.checkpoint)
        vox = sample_scan(pkg.spec)
        reference = spconv_logits(model, vox)
        graphs = ["cpu", "portable"] if pkg.cpu_onnx_path is not None else ["portable"]
        graphs += ["cpu-gemm"] if pkg.gemm_weights_path is not None else []
        for graph in graphs:
            parity = check_parity(pkg.root, reference, vox, graph=graph)
            print(f"parity of the {graph} graph vs {args.checkpoint} on the real sample, {parity}")
            if not parity.ok:
                return 1
    return 1 if problems else 0


def cmd_engine(args) -> int:
    from .engine import trtexec_command
    from .package import load_package

    pkg = load_package(args.package)
    precision = "fp16" if args.fp16 else "fp32"
    if args.print_trtexec:
        print(trtexec_command(pkg, precision))
        return 0
    from .tensorrt_backend import TensorRTBackend, ensure_engine

    path = ensure_engine(pkg, precision, Path(args.cache_dir) if args.cache_dir else None, force=args.rebuild)
    if args.build_only:
        print(path)
        return 0
    from .onnx_export import compare, sample_scan

    backend = TensorRTBackend(pkg.root, precision=precision, cache_dir=args.cache_dir)
    vox = sample_scan(pkg.spec)
    from .onnx_backend import OnnxRuntimeBackend

    ref = OnnxRuntimeBackend(pkg.root, graph="portable").run(vox.features, vox.coords, vox.spatial_shape)
    parity = compare(ref, backend.run(vox.features, vox.coords, vox.spatial_shape), pkg.spec.has_classes)
    print(f"{path}\nTensorRT {precision} vs onnxruntime on the real sample, {parity}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssov-export", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    o = sub.add_parser("onnx", help="checkpoint -> model package (ONNX + sidecar), parity-checked on the real sample")
    o.add_argument("--checkpoint", required=True, type=Path)
    o.add_argument("--out", required=True, type=Path, help="package directory, e.g. models/demo.ssovpkg")
    prof = o.add_mutually_exclusive_group()
    prof.add_argument("--profile", type=_profile, help="TensorRT MIN,OPT,MAX voxels (default 1024,<sample voxels>,"
                      "--max-voxels)")
    prof.add_argument("--max-voxels", type=_positive, default=SENSOR_MAX_POINTS,
                      help=f"largest scan (voxels) the TensorRT profile admits; default {SENSOR_MAX_POINTS}: any "
                      "single-return 128-beam x 2048-column scan (docs/performance.md, Shape profiles)")
    o.add_argument("--no-check", action="store_true", help="skip the parity check against spconv")
    o.add_argument("--text-embeddings", type=Path,
                   help="feature models: the text embeddings to carry (an .npz table or a teacher-output directory; "
                        "default: the teacher the checkpoint records, if still on disk)")
    o.set_defaults(func=cmd_onnx)
    c = sub.add_parser("check", help="verify a package (sidecar, sha256, TensorRT readiness[, parity])")
    c.add_argument("package", type=Path)
    c.add_argument("--checkpoint", type=Path, help="also check parity against this checkpoint on the real sample")
    c.set_defaults(func=cmd_check)
    e = sub.add_parser("engine", help="build / validate the cached TensorRT engine of a package (GPU machine)")
    e.add_argument("package", type=Path)
    e.add_argument("--fp16", action="store_true", help="fp16 engine (default fp32)")
    e.add_argument("--build-only", action="store_true", help="build (or validate) the engine and exit")
    e.add_argument("--rebuild", action="store_true", help="rebuild even when the cached engine matches")
    e.add_argument("--cache-dir", help="engine cache (default: <package>/engines)")
    e.add_argument("--print-trtexec", action="store_true", help="print the equivalent trtexec command and exit")
    e.set_defaults(func=cmd_engine)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError) as exc:
        print(f"ssov-export: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
