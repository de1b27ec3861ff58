"""Where an artifact's inference time goes, per operator: ONNX Runtime's per-node profile or the
OpenVINO CPU plugin's performance counters, on sessions set up as the benchmark times them
(`bench_worker`'s settings). When a speed-up differs between runtimes, the operators whose time
differs say why, and OpenVINO's kernel names say which code ran them (e.g. `brgconv_avx512_amx`)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd

from lwpar.deploy import bench_worker
from lwpar.deploy.runtimes import require

COLUMNS = ["artifact", "runtime", "op", "kernel", "nodes", "ms", "share"]


def node_times(path: Path, runtime: str, threads: int = 1, batch: int = 1, runs: int = 30, warmup: int = 5,
               precision: str = "f32") -> pd.DataFrame:
    """Per operator type and kernel: how many nodes ran it and their mean milliseconds per inference
    over `runs` inferences after `warmup`, and their share of the summed node time."""
    require(runtime)
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got {runs} and {warmup}")
    nodes = (_openvino_nodes if runtime == "openvino" else _onnxruntime_nodes)(path, threads, batch, runs, warmup,
                                                                               precision)
    frame = pd.DataFrame(nodes, columns=["op", "kernel", "node", "us"])
    table = (frame.groupby(["op", "kernel"], as_index=False)
             .agg(nodes=("node", "nunique"), ms=("us", "sum")))
    table["ms"] = table["ms"] / runs / 1000
    table["share"] = table["ms"] / table["ms"].sum() if len(table) else []
    table.insert(0, "runtime", runtime)
    return table.sort_values("ms", ascending=False, ignore_index=True)


def _onnxruntime_nodes(path, threads, batch, runs, warmup, precision):
    with tempfile.TemporaryDirectory() as tmp:
        session = bench_worker.onnxruntime_session(path, threads, ["CPUExecutionProvider"], f"{tmp}/ort")
        call = bench_worker.onnxruntime_runner(session, batch)
        for _ in range(warmup + runs):
            call()
        events = json.loads(Path(session.end_profiling()).read_text())
    # the warm-up inferences are in the same trace: only node events after the first timed run count
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    first = starts[warmup]
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= first:
            args = event.get("args", {})
            yield (args.get("op_name", "?"), args.get("provider", "").removesuffix("ExecutionProvider"),
                   event["name"].removesuffix("_kernel_time"), event["dur"])


def _openvino_nodes(path, threads, batch, runs, warmup, precision):
    import openvino as ov

    request, images = bench_worker.openvino_request(path, threads, batch, precision, counters=True)
    for index in range(warmup + runs):
        request.infer({0: images})
        if index >= warmup:  # the counters hold the last inference's times
            for info in request.get_profiling_info():
                if info.status == ov.ProfilingInfo.Status.EXECUTED:
                    yield info.node_type, info.exec_type, info.node_name, info.real_time.total_seconds() * 1e6


def compare(tables: pd.DataFrame, top: int = 8) -> pd.DataFrame:
    """Per runtime, the `top` operator types by their largest time in any artifact, as milliseconds per
    artifact (columns), with each artifact's summed node time last: which ops a speed-up comes from."""
    rows = []
    for runtime, one in tables.groupby("runtime", sort=False):
        by_op = one.groupby(["op", "artifact"], sort=False)["ms"].sum().unstack("artifact").fillna(0.0)
        by_op = by_op.loc[by_op.max(axis=1).sort_values(ascending=False).index[:top]]
        by_op.loc["all nodes"] = one.groupby("artifact", sort=False)["ms"].sum()
        rows.append(by_op.reset_index().assign(runtime=runtime))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
