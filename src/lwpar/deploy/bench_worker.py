"""A benchmark worker: one fresh process per ONNX artifact, driven over stdin/stdout (JSON lines),
so that the parent can interleave variants round by round and read each one's peak memory. It needs
numpy and the runtime only (it is copied to remote targets): ONNX Runtime with the given providers,
or OpenVINO's CPU plugin (latency hint, the given threads and inference precision, each batch size
compiled with a static shape, as a deployment fixes it).

    python bench_worker.py MODEL PROVIDERS [RUNTIME [PRECISION]]

Commands: {"batch": B, "threads": T, "iters": N} -> {"seconds": [...]};  {"quit": true}.
Given a folder instead of a file, the worker holds every `*.onnx` in it (the per-layer latency
table: hundreds of one-layer models, one process) and each command names its file: {"model": NAME, ...}.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def onnxruntime_session(path, threads: int, providers: list[str], profile_prefix: str | None = None):
    """A session as the benchmark times it; with `profile_prefix`, also writing ONNX Runtime's per-node
    profile (`lwpar node-profile`)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle workers must not spin: the variants' workers take turns on the same cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=providers)


def onnxruntime_runner(session, batch: int):
    name = session.get_inputs()[0].name
    shape = [batch, *session.get_inputs()[0].shape[1:]]
    images = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    return lambda: session.run(None, {name: images})


def openvino_config(threads: int, precision: str) -> dict:
    """OpenVINO CPU plugin settings: latency hint (one stream), `threads` (0: all cores), inference precision."""
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


def openvino_request(path, threads: int, batch: int, precision: str, counters: bool = False):
    """An infer request as the benchmark times it, with its random images; `counters`: the CPU plugin
    also records each node's time (`lwpar node-profile`)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    port = model.inputs[0]
    shape = [batch, *(d.get_length() for d in list(port.get_partial_shape())[1:])]
    model.reshape({port.get_any_name(): shape})
    config = {**openvino_config(threads, precision), **({"PERF_COUNT": True} if counters else {})}
    request = core.compile_model(model, "CPU", config).create_infer_request()
    return request, np.random.default_rng(0).standard_normal(shape, dtype=np.float32)


def openvino_runner(path, threads: int, batch: int, precision: str):
    request, images = openvino_request(path, threads, batch, precision)
    return lambda: request.infer({0: images})


def main() -> int:
    from pathlib import Path

    path, providers = Path(sys.argv[1]), sys.argv[2].split(",")
    runtime = sys.argv[3] if len(sys.argv) > 3 else "onnxruntime"
    precision = sys.argv[4] if len(sys.argv) > 4 else "f32"
    models = {p.name: p for p in sorted(path.glob("*.onnx"))} if path.is_dir() else {path.name: path}
    runners, sessions = {}, {}  # an ONNX Runtime session serves every batch size
    print(json.dumps({"ready": True, "rss_mb": peak_rss_mb()}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("quit"):
            break
        threads, model = command["threads"], command.get("model", next(iter(models)))
        if model not in models:
            print(json.dumps({"error": f"the benchmark worker has no model {model!r}"}), flush=True)
            continue
        key = (model, threads, command["batch"])
        if key not in runners:
            try:
                if runtime == "openvino":
                    runners[key] = openvino_runner(models[model], threads, command["batch"], precision)
                else:
                    if (model, threads) not in sessions:
                        sessions[model, threads] = onnxruntime_session(models[model], threads, providers)
                    runners[key] = onnxruntime_runner(sessions[model, threads], command["batch"])
            except Exception as exc:  # the parent reports it as one line naming the artifact
                print(json.dumps({"error": f"{runtime} cannot run it: {str(exc).strip().splitlines()[-1][:200]}"}),
                      flush=True)
                continue
        call = runners[key]
        seconds = []
        for _ in range(command["iters"]):
            started = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - started)
        print(json.dumps({"seconds": seconds, "rss_mb": peak_rss_mb()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
