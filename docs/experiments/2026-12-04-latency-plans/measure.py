"""Export baseline, the MAC-planned lwalm (50 %) and the latency-planned variants; time them interleaved
(batch 1, 1 thread, 20 rounds); compare with each plan's prediction."""
import json
from pathlib import Path

import pandas as pd

from lwpar.export import export_onnx
from lwpar.profile import benchmark, machine_info
from lwpar.structure import load_model

run = Path("/work/fresh/results/peta/alm_r50h")
models = {"baseline": run / "baseline/model.pt", "lwalm_macs50": run / "lwalm/compressed.pt",
          **{v: Path(f"/tmp/latval/{v}/compressed.pt") for v in ("lat12", "lat135", "lat15")}}
onnx, macs = {}, {}
for name, path in models.items():
    model, blob = load_model(path)
    if "macs" in blob:
        macs[name] = blob["macs"]["after"] / blob["macs"]["before"]
    onnx[name] = export_onnx(model.eval(), blob["model_cfg"]["input_size"], Path(f"/tmp/latval/{name}.onnx"))
target = {"providers": ["CPUExecutionProvider"], "command_prefix": None, "copy_command": None, "remote_dir": None}
result = benchmark(onnx, target, {"batch_sizes": [1], "threads": [1], "warmup": 5, "rounds": 20, "iters_per_round": 5})
base = result["baseline"]["latency"][0]["median_ms"]
rows = []
for name in onnx:
    ms = result[name]["latency"][0]["median_ms"]
    row = {"variant": name, "median_ms": round(ms, 2), "measured_speedup": round(base / ms, 3),
           "macs_fraction": round(macs.get(name, 1.0), 3)}
    layers = Path(f"/tmp/latval/{name}/layers.csv")
    if layers.exists():
        t = pd.read_csv(layers)
        planned = t.plan_model_ms.iloc[0] / t.plan_predicted_ms.iloc[0]
        row.update(asked={"lat12": 1.2, "lat135": 1.35, "lat15": 1.5}[name], planned_speedup=round(planned, 3),
                   plan_error_pct=round((base / ms / planned - 1) * 100, 1), layers=len(t),
                   table_model_ms=round(t.plan_model_ms.iloc[0], 2))
    rows.append(row)
print(json.dumps(machine_info()))
print(pd.DataFrame(rows).to_string(index=False))
