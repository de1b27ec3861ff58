"""The INT8 table of docs/experiments/2026-12-07-qat.md from the fit sweep's comparison.csv: each
quantized model's FP32 and INT8 test mA, the INT8 loss against its own FP32 model, each against its
matched control, and the speed-ups (batch 1, one thread, the report's one interleaved run).

    python docs/experiments/2026-12-07-qat/summary.py results/fit_sweep/comparison.csv
"""

import sys

import pandas as pd

table = pd.read_csv(sys.argv[1])
one = table[(table.batch == 1) & (table.threads == 1) & (table.target == "local_cpu")].set_index("variant")
rows = []
for name in [v.removesuffix("+int8") for v in one.index if v.endswith("+int8")]:
    fp32, int8 = one.loc[name], one.loc[f"{name}+int8"]
    rows.append({"model": name, "FP32 mA": fp32.mA * 100, "INT8 mA": int8.mA * 100,
                 "INT8 - FP32": (int8.mA - fp32.mA) * 100,
                 "FP32 vs control": fp32.delta_control_mA * 100, "control": fp32.control if isinstance(fp32.control, str) else "",
                 "INT8 vs control": int8.delta_control_mA * 100,
                 "INT8 control": int8.control if isinstance(int8.control, str) else "",
                 "FP32 speed-up": fp32.speedup, "INT8 speed-up": int8.speedup})
print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".2f"))
