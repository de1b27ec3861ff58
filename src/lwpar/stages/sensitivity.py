"""Measure per-layer sensitivity for a variant whose rank policy is measured (`search`, the LWALM
binary search, `greedy`, the AIMET-style budget allocation, or `latency`, allocation by measured
latency): the validation score of the
baseline with one layer at a time factorized at a given rank, BatchNorm re-estimated on training
batches. Never touches the test split.

Writes the sensitivity cache (JSON): the scores, keyed by layer, method and rank, and the settings
they were measured under. The decompose stage plans from it, for this variant or for any variant
that names it in `rank.search.sensitivity_from`.

Every probe is also written to `<out>.partial` as it is measured: the same command run again after
an interruption measures only the probes that file lacks (a file from other settings is discarded).
Without a terminal, each probe is logged as one line. The modules that run before the probed layer
replay their outputs from the layer's first probe (held in memory: the validation images' and
calibration batches' activations at that point).
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="trained model.pt")
    parser.add_argument("--dataset-dir", required=True, type=Path,
                        help="prepared dataset (train and val splits): its folder or its manifest")
    parser.add_argument("--variant", required=True, help="variant name in params variants")
    parser.add_argument("--out", required=True, type=Path, help="sensitivity cache (JSON) to write")


def run(args, params) -> None:
    import time

    from tqdm import tqdm

    from lwpar import LwparError
    from lwpar.complexity import count_macs
    import torch

    from lwpar.config import MEASURED_POLICIES
    from lwpar.data.loader import ImageTable, Prepared, build_transform, make_loader
    from lwpar.decompose.factorize import factorized_layers, layer_info, select_layers
    from lwpar.decompose.search import SensitivityProbe, cache_settings, curve_scores, load_cache, plan, save_cache
    from lwpar.io import read_json
    from lwpar.metrics import pedestrian_metrics
    from lwpar.runtime import configure, run_precision, seed_everything
    from lwpar.structure import check_start_model, load_model
    from lwpar.train import recalibrate_batchnorm

    recipe = params["variants"].get(args.variant, {}).get("decompose")
    if recipe is None or recipe["rank"]["policy"] not in MEASURED_POLICIES:
        raise LwparError(f"--variant {args.variant!r}: not a decomposition variant with a measured rank policy "
                         f"({' or '.join(MEASURED_POLICIES)})")
    search = recipe["rank"]["search"]
    device = configure(params)
    seed_everything(params["seed"])
    model, blob = load_model(args.model)
    earlier = check_start_model(args.model, blob, args.variant, params["variants"][args.variant]["base"])
    model.to(device, memory_format=torch.channels_last).eval()
    size = blob["model_cfg"]["input_size"]
    precision = run_precision(model, params["runtime"]["amp"], size, device)
    data = Prepared(args.dataset_dir)
    plain = build_transform(size, False)
    batch, threshold = params["evaluate"]["batch_size"], params["evaluate"]["threshold"]
    # Decoded once: every probe sees the same validation images and calibration batches.
    val_paths, val_labels = data.split("val", limit=search["val_images"])
    val_images = torch.stack([ImageTable(val_paths, val_labels, plain)[i][0] for i in range(len(val_paths))])
    train_paths, train_labels = data.split("train")
    loader = make_loader(train_paths, train_labels, plain, params["train"]["batch_size"], 0, shuffle=True,
                         seed=params["seed"])
    calibration = [b for _, b in zip(range(search["calibration_batches"]), loader)]
    meta = {**cache_settings(params, recipe, args.model), "variant": args.variant,
            **({"precision": str(precision)} if precision != torch.float32 else {})}
    partial = args.out.with_name(args.out.name + ".partial")
    resumed, spent = {}, 0.0  # spent: seconds the interrupted runs measured for, so the total stays honest
    if partial.exists():
        try:
            resumed = load_cache(partial, meta)
            spent = float(read_json(partial).get("seconds", 0.0))
        except LwparError:  # measured under other settings: resuming it would mix two runs
            partial.unlink()
    if resumed:
        print(f"{args.variant}: resuming with {len(resumed)} probes measured by an interrupted run", flush=True)
    bar = tqdm(desc=f"sensitivity {args.variant}", unit="probe", disable=None)
    last = time.time()

    def record(key, value):
        nonlocal last
        save_cache(partial, probe, {**meta, "seconds": round(spent + time.time() - started, 1)})
        bar.update()
        if bar.disable:  # no terminal (a pipeline's log file): one line per probe instead of a bar
            print(f"probe {len(probe.cache)}: {key} {search['metric']} {value:.4f} ({time.time() - last:.1f} s)",
                  flush=True)
        last = time.time()

    @torch.no_grad()
    def score(m):
        # channels_last input, as in training: 1.5-1.7x faster on CPU than NCHW (measured at batch 64,
        # 256 x 128 on ALM-Lite0); the probabilities differ by about 1e-6
        with torch.autocast(device.type, dtype=precision, enabled=precision != torch.float32):
            probs = torch.cat([torch.sigmoid(m(chunk.to(device, memory_format=torch.channels_last)).float()).cpu()
                               for chunk in val_images.split(batch)])
        return pedestrian_metrics(val_labels, probs.numpy(), threshold)[search["metric"]]

    def recalibrate(m):
        recalibrate_batchnorm(m, calibration, device, max_batches=len(calibration))

    started = time.time()
    # every probe scores the same images and recalibrates on the same batches: what runs before the
    # probed layer can be replayed (reuse_prefix)
    probe = SensitivityProbe(model, score, recalibrate if calibration else None, seed=params["seed"], epc=recipe.get("epc"),
                             cache=resumed, on_measure=record, reuse_prefix=True)
    names = select_layers(model, recipe["kinds"], recipe["include_first"], recipe["include_heads"],
                          factorized=factorized_layers(earlier))
    if not names:
        raise LwparError(f"variant {args.variant}: no layer of kinds {recipe['kinds']} to factorize in this model")
    if recipe["rank"]["policy"] == "latency":  # the ranks need the latency table: decompose chooses them
        probe.baseline()
        curve_scores(probe, layer_info(model, names, recipe["methods"], size), search["fractions"], recipe["rank"]["multiple"])
        chosen = []
    else:
        chosen = plan(model, names, recipe["methods"], size, recipe["rank"], count_macs(model, size), probe)
    bar.close()
    save_cache(args.out, probe, {**meta, "seconds": round(spent + time.time() - started, 1), "resumed_probes": len(resumed),
                                 "plan": [{"layer": e["layer"], "rank": e["rank"]} for e in chosen]})
    partial.unlink(missing_ok=True)
    print(f"{args.variant}: {probe.measured} probes in {time.time() - started:.0f} s"
          f"{f' ({len(resumed)} more resumed)' if resumed else ''}; "
          + (f"{len(chosen)} of {len(names)} layers get a rank" if recipe["rank"]["policy"] != "latency"
             else "the ranks are chosen with the latency table"))
