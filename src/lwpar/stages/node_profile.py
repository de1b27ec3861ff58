"""Where each artifact's inference time goes, per operator, on ONNX Runtime and OpenVINO.

ONNX Runtime's per-node profile and the OpenVINO CPU plugin's performance counters, on sessions set
up as the benchmark times them (one thread by default, batch 1, FP32 layers in f32 on OpenVINO):
per artifact, runtime, operator type and kernel, the nodes and their mean milliseconds per
inference. Printed as a comparison of the slowest operators across the artifacts, with the CPU
flags; --out writes the long table. Read it when a speed-up differs between runtimes or from the
MAC reduction. Needs no params file.
"""

from __future__ import annotations

from pathlib import Path

from lwpar.stages import flag, named_paths

NEEDS_PARAMS = False
FLAGS = [
    flag("--onnx", "artifacts as NAME=PATH (PATH: model.onnx or its folder)", nargs="+", required=True),
    flag("--runtime", "runtimes to profile on", nargs="+", default=["onnxruntime", "openvino"],
         choices=["onnxruntime", "openvino"]),
    flag("--threads", "threads per inference (0: the runtime's choice)", type=int, default=1),
    flag("--batch", "images per inference", type=int, default=1),
    flag("--runs", "timed inferences per artifact and runtime", type=int, default=30),
    flag("--warmup", "inferences run first and not counted", type=int, default=5),
    flag("--precision", "OpenVINO's precision for FP32 layers", default="f32", choices=["f32", "bf16", "f16"]),
    flag("--top", "operators shown per runtime", type=int, default=8),
    flag("--out", "CSV of every artifact's, runtime's, operator's and kernel's time", type=Path),
]


def run(args, params) -> None:
    import pandas as pd

    from lwpar.core.errors import LwparError
    from lwpar.core.io import write_csv
    from lwpar.core.machine import cpu_flags, cpu_model
    from lwpar.deploy.node_profile import COLUMNS, compare, node_times

    artifacts = {name: path / "model.onnx" if path.is_dir() else path
                 for name, path in named_paths(args.onnx, "onnx").items()}
    for name, path in artifacts.items():
        if not path.is_file():
            raise LwparError(f"--onnx {name}={path}: not found")
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile"})
    print(f"{cpu_model()}; {', '.join(flags) or 'no AVX2'}; {args.threads} thread(s), batch {args.batch}, "
          f"{args.runs} runs after {args.warmup}")
    tables = []
    for runtime in args.runtime:
        for name, path in artifacts.items():
            tables.append(node_times(path, runtime, args.threads, args.batch, args.runs, args.warmup,
                                     args.precision).assign(artifact=name))
            print(f"{name} on {runtime}: {tables[-1]['ms'].sum():.2f} ms in nodes", flush=True)
    every = pd.concat(tables, ignore_index=True)
    if args.out:
        write_csv(args.out, every[COLUMNS])
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        for runtime, table in compare(every, args.top).groupby("runtime", sort=False):
            print(f"\n{runtime}: milliseconds per inference by operator\n{table.drop(columns='runtime').to_string(index=False)}")
