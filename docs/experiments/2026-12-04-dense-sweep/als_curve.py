"""CP-ALS error against iterations on the sweep baseline's kernels, with lwpar's settings (SVD init,
line search, the MTTKRP), recording the relative error each iteration up to a cap."""
import sys, time, json
import numpy as np, torch, tensorly as tl
from tensorly.decomposition import parafac
from lwpar.decompose import _cp
from lwpar.structure import load_model

model, _ = load_model(sys.argv[1])
cap = int(sys.argv[2])
out = {}
for name, rank in [("main_branch.layer1.0.conv2", 56), ("main_branch.layer3.0.conv2", 240)]:
    w = dict(model.named_modules())[name].weight.detach().double().numpy()
    cout, cin, kh, kw = w.shape
    t = w.transpose(1, 0, 2, 3).reshape(cin, cout, kh * kw)
    errors = []
    start = time.time()
    with tl.backend_context("numpy"), _cp._three_way_mttkrp():
        parafac(tl.tensor(t), rank, init="svd", random_state=0, n_iter_max=cap, tol=1e-15,
                normalize_factors=False, linesearch=True, callback=lambda cp, e: errors.append(float(e)) and False)
    win = 50
    stop = next((i for i in range(win + 1, len(errors)) if errors[i - win - 1] - errors[i] <= 1e-5 * errors[i]), None)
    out[name] = {"rank": rank, "seconds": round(time.time() - start, 1), "stop_rule_iteration": stop,
                 **{f"error@{n}": errors[min(n, len(errors) - 1)] for n in (50, 100, 300, 1000, 2000, cap) if n <= cap}}
    print(name, out[name], flush=True)
json.dump(out, open(sys.argv[3], "w"), indent=1)
