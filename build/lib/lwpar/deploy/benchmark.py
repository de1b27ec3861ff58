"""Latency, throughput and memory of ONNX artifacts on a target, measured honestly.

Each artifact runs in its own fresh worker process, optionally on another machine: behind a command
prefix (e.g. `ssh pi@device`), with the artifacts and the standalone worker copied there first by
the target's copy command (e.g. `scp {src} pi@device:{dst}`); the results come back over the
worker's stdout. After warm-up, variants are measured interleaved, round by round, so that slow
drifts of a noisy machine hit all of them alike; the median, p90 and interquartile range of the
per-call times are reported per batch size and thread count, and speed-ups are ratios measured in
the same run.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

from lwpar.core.errors import LwparError
from lwpar.core.progress import Progress
from lwpar.core.timing import thread_count

MAX_ROUND_SECONDS = 0.5


def _copy(src: Path, dst: str, target: dict) -> None:
    command = shlex.split(target["copy_command"].format(src=shlex.quote(str(src)), dst=shlex.quote(dst)))
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise LwparError(f"copying {src} to the target failed ({shlex.join(command)}): "
                         f"{(done.stderr or done.stdout).strip()[-300:]}")


def stage_on_target(artifacts: dict[str, Path], target: dict) -> dict[str, str]:
    """Where each artifact is on the target. With `copy_command`, the artifacts and the standalone
    benchmark worker (it needs only numpy and the target's runtime there) are copied to `remote_dir` first."""
    if not target["copy_command"]:
        return {name: str(path) for name, path in artifacts.items()}
    remote = target["remote_dir"].rstrip("/")
    prefix = shlex.split(target["command_prefix"]) if target["command_prefix"] else []
    made = subprocess.run([*prefix, "mkdir", "-p", remote], capture_output=True, text=True)
    if made.returncode != 0:
        raise LwparError(f"cannot create {remote} on the target: {made.stderr.strip()[-300:]}")
    _copy(Path(__file__).with_name("bench_worker.py"), f"{remote}/lwpar_bench_worker.py", target)
    placed = {}
    for index, (name, path) in enumerate(artifacts.items()):
        placed[name] = f"{remote}/{index:02d}-{Path(path).parent.name}-{Path(path).name}"
        if Path(path).is_dir():  # a folder of models for one worker (the latency table's layers)
            made = subprocess.run([*prefix, "mkdir", "-p", placed[name]], capture_output=True, text=True)
            if made.returncode != 0:
                raise LwparError(f"cannot create {placed[name]} on the target: {made.stderr.strip()[-300:]}")
            for file in sorted(Path(path).glob("*.onnx")):
                _copy(file, f"{placed[name]}/{file.name}", target)
        else:
            _copy(Path(path), placed[name], target)
    return placed


class Worker:
    def __init__(self, path: Path, target: dict, placed: str | None = None):
        prefix = shlex.split(target["command_prefix"]) if target["command_prefix"] else []
        if target["copy_command"]:  # the copied standalone worker, with the target's own python
            program = ["python3", f"{target['remote_dir'].rstrip('/')}/lwpar_bench_worker.py"]
        else:
            program = [sys.executable if not prefix else "python3", "-m", "lwpar.deploy.bench_worker"]
        command = [*prefix, *program, placed or str(path), ",".join(target["providers"]), target["runtime"],
                   target["inference_precision"]]
        self.path = path
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.peak_rss_mb = self._read()["rss_mb"]

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise LwparError(f"{self.path}: benchmark worker died (exit code {self.process.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            raise LwparError(f"{self.path}: {reply['error']}")
        return reply

    def run(self, batch: int, threads: int, iters: int, model: str | None = None) -> list[float]:
        """Seconds per call; `model` names the file when the worker holds a folder of models."""
        command = {"batch": batch, "threads": threads, "iters": iters, **({"model": model} if model else {})}
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        reply = self._read()
        self.peak_rss_mb = max(self.peak_rss_mb, reply["rss_mb"])
        return reply["seconds"]

    def close(self) -> None:
        try:
            self.process.stdin.write(json.dumps({"quit": True}) + "\n")
            self.process.stdin.flush()
            self.process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()


def paired_speedup(base_round_ms: list[float], round_ms: list[float]) -> dict:
    """Speed-up per round, the baseline and the variant timed back to back in each: a slow spell of
    the machine slows both and cancels in their ratio, so the spread of these ratios is the
    measurement's own uncertainty. Returns their median and quartiles."""
    ratios = np.asarray(base_round_ms, dtype=float) / np.asarray(round_ms, dtype=float)
    q1, median, q3 = np.percentile(ratios, [25, 50, 75])
    return {"speedup_paired": float(median), "speedup_q1": float(q1), "speedup_q3": float(q3)}


def benchmark(artifacts: dict[str, Path], target: dict, cfg: dict) -> dict:
    """{name: {"peak_rss_mb", "latency": [{batch, threads, median_ms, p90_ms, iqr_ms, images_per_s}]}}."""
    thread_counts = sorted({thread_count(t) for t in cfg["threads"]})
    placed = stage_on_target(artifacts, target)
    workers = {name: Worker(path, target, placed[name]) for name, path in artifacts.items()}
    results = {name: {"latency": []} for name in artifacts}
    progress = Progress(len(cfg["batch_sizes"]) * len(thread_counts) * cfg["rounds"], f"profiling {len(artifacts)} models",
                        unit="round")
    try:
        for batch in cfg["batch_sizes"]:
            for threads in thread_counts:
                samples = {name: [] for name in workers}
                iters = {}
                for name, worker in workers.items():
                    warm = worker.run(batch, threads, max(cfg["warmup"], 1))
                    # Slow artifacts get fewer calls per round (at least one), so a round stays short.
                    iters[name] = max(1, min(cfg["iters_per_round"], int(MAX_ROUND_SECONDS / max(min(warm), 1e-6))))
                rounds = {name: [] for name in workers}
                for _ in range(cfg["rounds"]):
                    for name, worker in workers.items():
                        seconds = worker.run(batch, threads, iters[name])
                        samples[name] += seconds
                        rounds[name].append(float(np.median(seconds)) * 1000)
                    progress.update(note=f"batch {batch}, {threads} thread{'s' if threads > 1 else ''}")
                for name, seconds in samples.items():
                    ms = np.array(seconds) * 1000
                    q1, median, q3, p90 = np.percentile(ms, [25, 50, 75, 90])
                    results[name]["latency"].append({
                        "batch": batch, "threads": threads, "median_ms": float(median), "p90_ms": float(p90),
                        "iqr_ms": float(q3 - q1), "images_per_s": float(batch * 1000 / median), "calls": len(ms),
                        "round_ms": rounds[name]})
        for name, worker in workers.items():
            results[name]["peak_rss_mb"] = worker.peak_rss_mb
    finally:
        progress.close(final_line=sys.exc_info()[0] is None)
        for worker in workers.values():
            worker.close()
    return results


def _export_timed(models: dict, folder: Path) -> dict:
    """Each model as its own ONNX file in `folder` (fixed input shape); returns the file names. Whole
    models go through the export stage's own exporter, so that they are timed as the profile times them."""
    import torch

    from lwpar.deploy.export import export_onnx

    names = {}
    for index, (key, timed) in enumerate(models.items()):
        names[key] = f"{index:04d}.onnx"
        if timed.whole:
            export_onnx(timed.module.eval(), list(timed.input_shape[2:]), folder / names[key])
            continue
        example = torch.randn(*timed.input_shape)
        torch.onnx.export(timed.module.eval(), (example,), str(folder / names[key]), input_names=["x"],
                          opset_version=18, dynamo=False)
    return names


def target_timer(target: dict, batch: int, threads: int, profile: dict, seed: int = 0):
    """A `core.timing.Timer` on `target` (a params profile.targets entry): every model exported to ONNX,
    staged through the target's commands, held by one benchmark worker; each session created and
    warmed before any round, then `profile["rounds"]` interleaved rounds of `profile["iters_per_round"]`
    runs each, at `batch` and `threads`."""
    import tempfile

    from lwpar.core.timing import measure

    def timer(models: dict) -> dict:
        with tempfile.TemporaryDirectory(prefix="lwpar-latency-") as folder:
            files = _export_timed(models, Path(folder))
            placed = stage_on_target({"table": Path(folder)}, target)["table"]
            worker = Worker(Path(folder), target, placed)
            try:
                for key in models:
                    worker.run(batch, threads, max(profile["warmup"], 1), model=files[key])
                return measure(list(models), lambda key: float(np.median(worker.run(
                    batch, threads, profile["iters_per_round"], model=files[key]))) * 1000,
                    rounds=profile["rounds"], seed=seed)
            finally:
                worker.close()
    return timer
