"""Time every factorizable layer and its replacements at candidate ranks on a target (latency policy).

For variants with the `latency` rank policy, the table of their sensitivity source (which may be a
`greedy` variant): every layer it may factorize, alone, and its replacement at each candidate rank
(the parameter fractions of `rank.search.fractions`), and the whole start model, timed with ONNX
Runtime on the policy's target at the profile's first batch size and thread count, in interleaved,
shuffled rounds; then the calibration models (the whole model with sets of faster replacements in
place) beside the whole model, which map summed per-layer savings to measured ones.

Writes the table (JSON): per candidate the median and quartiles in ms, with what it was measured
under (start model sha256, target and its commands, batch, threads, ONNX Runtime, the CPU). The
decompose stage allocates ranks from it and the sensitivity cache.
"""

from __future__ import annotations

from pathlib import Path

from lwpar.stages import flag, variant, start_model

FLAGS = [
    start_model(),
    variant("rank policy: latency"),
    flag("--target", "target name in params profile.targets", "wildcard:target", required=True),
    flag("--out", "latency table (JSON) to write", "output:table", type=Path, required=True),
]


def run(args, params) -> None:
    from lwpar.compress.decompose.factorize import layer_info
    from lwpar.compress.ranks.latency import TABLE_FORMAT, measure_table
    from lwpar.compress.recipes import CURVE_POLICIES
    from lwpar.compress.steps import start
    from lwpar.core.errors import LwparError
    from lwpar.core.io import sha256_file, write_json
    from lwpar.core.machine import machine_info
    from lwpar.core.timing import plan_settings
    from lwpar.deploy.benchmark import target_timer

    recipe = params["variants"].get(args.variant, {}).get("decompose")
    # only the policies that score candidate ranks read search.fractions (the others' configuration drops it)
    if recipe is None or "fractions" not in recipe["rank"].get("search", {}):
        raise LwparError(f"--variant {args.variant!r}: not a decomposition variant whose rank policy scores "
                         f"candidate ranks ({' or '.join(CURVE_POLICIES)})")
    if args.target not in params["profile"]["targets"]:
        raise LwparError(f"--target {args.target!r}: not in params profile.targets "
                         f"({', '.join(params['profile']['targets'])})")
    target, profile = params["profile"]["targets"][args.target], params["profile"]
    batch, threads = plan_settings(profile)
    begun = start(args.model, params, args.variant, "decompose")
    info = layer_info(begun.model, begun.names, recipe["methods"], begun.input_size)
    table = measure_table(begun.model, info, recipe["rank"]["search"]["fractions"], recipe["rank"]["multiple"], batch,
                          begun.input_size, target_timer(target, batch, threads, profile, params["seed"]))
    whole_ms = table.pop("whole_model_ms")
    write_json(args.out, {
        "format": TABLE_FORMAT, "variant": args.variant, "model_sha256": sha256_file(args.model),
        "target": args.target, "target_settings": target, "batch": batch, "threads": threads,
        "rounds": profile["rounds"], "iters_per_round": profile["iters_per_round"], "machine": machine_info(),
        **table})
    ratios = ", ".join(f"{c['saving_ms'] / c['raw_saving_ms']:.2f}" for c in table["calibration"] if c["raw_saving_ms"] > 0)
    print(f"{args.variant}: {len(table['candidates'])} candidates and {len(table['calibration'])} calibration models timed "
          f"on {args.target} (batch {batch}, {threads} thread{'s' if threads > 1 else ''}) in {table['seconds']:.0f} s; "
          f"whole model {whole_ms:.2f} ms; median relative IQR {table['relative_iqr_median']:.3f}; "
          f"measured over summed savings {ratios or '-'}")
