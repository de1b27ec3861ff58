"""Export the baseline, the MAC-planned lwalm (50 % MACs) and every latency plan found in $OUT; time
them in one interleaved run (batch 1, one thread, 20 rounds); set each plan's asked, uncalibrated and
calibrated predicted speed-ups against the measured one."""
import json
import os
from pathlib import Path

import pandas as pd
import yaml

from lwpar.export import export_onnx
from lwpar.profile import benchmark, machine_info
from lwpar.structure import load_model

out, run = Path(os.environ["OUT"]), Path("results/peta/alm_r50h")
asked = {v: r["decompose"]["rank"]["speedup"] for v, r in yaml.safe_load(Path("lat.yaml").read_text())["variants"].items()}
plans = sorted((v for v in asked if (out / v / "compressed.pt").exists()), key=asked.get)
models = {"baseline": run / "baseline/model.pt", "lwalm_macs50": run / "lwalm/compressed.pt",
          **{v: out / v / "compressed.pt" for v in plans}}
onnx, macs = {}, {}
for name, path in models.items():
    model, blob = load_model(path)
    if "macs" in blob:
        macs[name] = blob["macs"]["after"] / blob["macs"]["before"]
    onnx[name] = export_onnx(model.eval(), blob["model_cfg"]["input_size"], out / f"{name}.onnx")
target = {"providers": ["CPUExecutionProvider"], "command_prefix": None, "copy_command": None, "remote_dir": None}
result = benchmark(onnx, target, {"batch_sizes": [1], "threads": [1], "warmup": 5, "rounds": 20, "iters_per_round": 5})
base = result["baseline"]["latency"][0]["median_ms"]
rows = []
for name in onnx:
    ms = result[name]["latency"][0]["median_ms"]
    row = {"variant": name, "median_ms": round(ms, 2), "measured": round(base / ms, 3), "macs_fraction": round(macs.get(name, 1.0), 3)}
    if name in asked:
        t = pd.read_csv(out / name / "layers.csv")
        planned = t.plan_model_ms.iloc[0] / t.plan_predicted_ms.iloc[0]
        row.update(asked=asked[name], uncalibrated=round(t.plan_model_ms.iloc[0] / t.plan_uncalibrated_ms.iloc[0], 3),
                   predicted=round(planned, 3), vs_asked_pct=round((base / ms / asked[name] - 1) * 100, 1),
                   plan_error_pct=round((base / ms / planned - 1) * 100, 1), layers=len(t))
    rows.append(row)
table = json.loads((out / "latency.json").read_text())
print(json.dumps(machine_info()))
print("calibration:", [(c["name"], c["layers"], round(c["raw_saving_ms"], 2), round(c["saving_ms"], 2))
                       for c in table["calibration"]], "whole", table["calibration_model_ms"])
print(pd.DataFrame(rows).to_string(index=False))
