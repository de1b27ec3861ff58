"""A model card per exported artifact: what the model is, how it was made, how well it scores and how
fast it runs, from the pipeline's own records (never retyped). `card.json` for tools, `card.md` for
people. No torch here: a card is read where the artifact is deployed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lwpar.core.errors import LwparError

FORMAT = "lwpar-card/1"
SCORES = ("mA", "accuracy", "precision", "recall", "f1")


def build(name: str, onnx: Path, metadata: dict, metrics: dict, thresholds: dict, parity: dict | None,
          training: dict, dataset: dict, profiles: list[dict]) -> dict:
    """The card of artifact `name`. `metadata`: the artifact's (lwpar.deploy.artifact); `metrics`: its test
    evaluation; `parity`: its FP32 source's export parity; `training`: the baseline's train.json;
    `dataset`: the prepared dataset's manifest; `profiles`: one profile per target."""
    latency = []
    for profile in profiles:
        result = profile["variants"].get(name)
        if result is None:
            continue
        machine = profile.get("machine", {})
        runtime = profile.get("target_config", {}).get("runtime", "onnxruntime")  # older profiles: ONNX Runtime
        for row in result["latency"]:
            latency.append({"target": profile["target"], "cpu": machine.get("cpu_model"),
                            "runtime": f"{runtime} {machine.get('versions', {}).get(runtime, '?')}",
                            **{k: row.get(k) for k in ("batch", "threads", "median_ms", "p90_ms", "speedup")},
                            "peak_rss_mb": result.get("peak_rss_mb")})
    counted = next((p["variants"][name] for p in profiles if name in p["variants"]), {})
    tuned = metrics.get("tuned_thresholds", {})
    return {
        "format": FORMAT,
        "artifact": name,
        "file": {"name": onnx.name, "sha256": hashlib.sha256(onnx.read_bytes()).hexdigest(),
                 "size_mb": round(onnx.stat().st_size / 1e6, 3)},
        "model": {**metadata.get("model", {}), "precision": metadata.get("precision"),
                  "compression": metadata.get("structure", [])},
        "made_by": metadata.get("lineage", []),
        "weights": {"pretrained": training.get("pretrained_weights"), "trained_on": dataset.get("dataset"),
                    "best_epoch": training.get("best_epoch"), "training_precision": training.get("precision")},
        "dataset": {"name": dataset.get("dataset"), "split": dataset.get("split_method"),
                    "split_sizes": dataset.get("split_sizes"), "attributes": metadata.get("attributes")},
        "preprocessing": metadata.get("preprocessing"),
        "metrics": {"split": metrics.get("split"), "images": metrics.get("images"),
                    "at_threshold_0.5": {k: metrics.get(k) for k in SCORES},
                    "at_tuned_thresholds": {k: tuned.get(k) for k in SCORES} if tuned else None,
                    "ece": metrics.get("calibration", {}).get("ece"), "mce": metrics.get("calibration", {}).get("mce")},
        "thresholds": {"file": "thresholds.json", "chosen_on": thresholds.get("chosen_on"),
                       "criterion": thresholds.get("criterion")},
        "complexity": {"macs": counted.get("macs"), "params": counted.get("params")},
        "latency": latency,
        "parity": None if parity is None else {
            "of": "this artifact" if metadata.get("precision") == "float32" else "its FP32 source",
            **{k: parity.get(k) for k in ("max_abs_diff", "bound", "images")}},
    }


def markdown(card: dict) -> str:
    """The card for people."""
    def pct(value):
        return "" if value is None else f"{100 * value:.2f}"

    model, metrics = card["model"], card["metrics"]
    lines = [f"# {card['artifact']}", "",
             f"ALM on `{model.get('backbone')}` ({model.get('precision')}, {model.get('alm_head')} head); "
             f"`{card['file']['name']}`, {card['file']['size_mb']} MB, sha256 `{card['file']['sha256'][:16]}...`.", "",
             "## How it was made", ""]
    for step in card["made_by"]:
        recipe = step.get("recipe")
        lines.append(f"- {step['stage']}" + (f" (variant `{step['variant']}`)" if "variant" in step else "")
                     + (f": `{json.dumps(recipe, sort_keys=True)}`" if recipe else ""))
    weights = card["weights"]["pretrained"]
    lines += ["", f"Backbone weights: {json.dumps(weights, sort_keys=True) if weights else 'trained from scratch'}.",
              "", "## Data", "",
              f"{card['dataset']['name']}, {card['dataset']['split']}; split sizes "
              f"{card['dataset']['split_sizes']}; {len(card['dataset']['attributes'] or [])} attributes.", "",
              f"Input: {json.dumps(card['preprocessing'], sort_keys=True)}.", "",
              f"## Scores ({metrics['split']} split, {metrics['images']} images, percent)", "",
              "| thresholds | " + " | ".join(SCORES) + " |", "|---|" + "---|" * len(SCORES)]
    for label, key in (("0.5 (as the literature scores)", "at_threshold_0.5"),
                       ("tuned on validation (thresholds.json)", "at_tuned_thresholds")):
        if metrics.get(key):
            lines.append(f"| {label} | " + " | ".join(pct(metrics[key][k]) for k in SCORES) + " |")
    lines += ["", f"Calibration: ECE {pct(metrics['ece'])} %, MCE {pct(metrics['mce'])} % (15 bins).", "",
              "## Cost", ""]
    complexity = card["complexity"]
    if complexity.get("macs"):
        lines.append(f"{complexity['macs'] / 1e6:.1f} M MACs, {complexity['params'] / 1e6:.2f} M parameters "
                     "(of the FP32 model).")
        lines.append("")
    if card["latency"]:
        lines += ["| target | cpu | batch | threads | median ms | p90 ms | speed-up vs baseline |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['target']} | {r['cpu']} | {r['batch']} | {r['threads']} | {r['median_ms']:.2f} | "
                  f"{r['p90_ms']:.2f} | {r['speedup']:.2f}x |" for r in card["latency"]]
    parity = card["parity"]
    if parity:
        lines += ["", f"ONNX parity with PyTorch ({parity['of']}): max |diff| {parity['max_abs_diff']:.2e} "
                      f"(bound {parity['bound']:.0e}) on {parity['images']} test images."]
    return "\n".join(lines) + "\n"


def _load(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise LwparError(f"{path}: unreadable ({exc})") from None


def from_files(name: str, onnx: Path, metrics: Path, thresholds: Path, parity: Path | None, training: Path,
               dataset: dict, profiles: list[Path]) -> dict:
    """The card of artifact `name` from the pipeline's record files (each profile must have measured it)."""
    from lwpar.deploy.artifact import read_metadata

    loaded = [_load(p) for p in profiles]
    missing = [str(p) for p, profile in zip(profiles, loaded) if name not in profile.get("variants", {})]
    if missing:
        raise LwparError(f"{', '.join(missing)}: no measurement of artifact {name!r}")
    return build(name, onnx, read_metadata(onnx), _load(metrics), _load(thresholds),
                 _load(parity) if parity else None, _load(training), dataset, loaded)
