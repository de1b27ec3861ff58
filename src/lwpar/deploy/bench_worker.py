"""A benchmark worker: one fresh process per ONNX artifact, driven over stdin/stdout (JSON lines),
so that the parent can interleave variants round by round and read each one's peak memory.

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


def main() -> int:
    import onnxruntime as ort

    from pathlib import Path

    path, providers = Path(sys.argv[1]), sys.argv[2].split(",")
    models = {p.name: p for p in sorted(path.glob("*.onnx"))} if path.is_dir() else {path.name: path}
    sessions = {}
    print(json.dumps({"ready": True, "rss_mb": peak_rss_mb()}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("quit"):
            break
        threads, model = command["threads"], command.get("model", next(iter(models)))
        if model not in models:
            print(json.dumps({"error": f"the benchmark worker has no model {model!r}"}), flush=True)
            continue
        if (model, threads) not in sessions:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            # Idle workers must not spin: the variants' workers take turns on the same cores.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            sessions[model, threads] = ort.InferenceSession(str(models[model]), options, providers=providers)
        session = sessions[model, threads]
        name = session.get_inputs()[0].name
        shape = [command["batch"], *session.get_inputs()[0].shape[1:]]
        images = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        seconds = []
        for _ in range(command["iters"]):
            started = time.perf_counter()
            session.run(None, {name: images})
            seconds.append(time.perf_counter() - started)
        print(json.dumps({"seconds": seconds, "rss_mb": peak_rss_mb()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
