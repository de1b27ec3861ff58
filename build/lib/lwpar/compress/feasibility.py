"""What the networks' shapes say about a decomposition recipe before any training: that it finds
layers to factorize, and that its MAC budget is within reach of the smallest ranks its policy may
choose. No weights, no data: the planner runs this before any job starts."""

from __future__ import annotations

from lwpar.core.errors import LwparError


def check_decompositions(params: dict) -> None:
    """Every decomposition variant that starts from the baseline finds layers to factorize, and its
    MAC budget is within reach. Raises LwparError naming the variant and the reason."""
    from lwpar.compress.decompose.factorize import layer_info, layer_io_sizes, select_layers
    from lwpar.compress.ranks.formula import macs_at
    from lwpar.evaluation.complexity import count_macs
    from lwpar.models import build_model

    variants = [v for v in params["experiment"]["variants"]
                if "decompose" in params["variants"][v] and params["variants"][v]["base"] is None]
    if not variants:
        return
    for name in params["experiment"]["models"]:
        cfg = params["models"][name]
        # the attribute count only sizes the classifiers, which no budget check depends on much
        model = build_model(cfg["arch"], cfg["backbone"], num_attributes=35, pretrained=False,
                            alm_head=cfg["alm_head"], align_corners=cfg["align_corners"], logit_bn=cfg["logit_bn"]).eval()
        total = count_macs(model, cfg["input_size"])
        selected = {v: select_layers(model, params["variants"][v]["decompose"]["kinds"],
                                     params["variants"][v]["decompose"]["include_first"],
                                     params["variants"][v]["decompose"]["include_heads"]) for v in variants}
        # one forward pass measures every selected layer's input and output sizes, for all variants
        io = layer_io_sizes(model, sorted({n for names in selected.values() for n in names}), cfg["input_size"])
        for variant in variants:
            recipe = params["variants"][variant]["decompose"]
            names = selected[variant]
            if not names:
                raise LwparError(f"variant {variant}: nothing to factorize in {name} ({cfg['backbone']} has no layer of "
                                 f"kinds {recipe['kinds']} that the recipe selects)")
            rank = recipe["rank"]
            if rank["policy"] not in ("budget", "greedy"):
                continue
            # budget: any fraction down to rank `multiple`; greedy: the smallest fraction it measures
            smallest = 1e-4 if rank["policy"] == "budget" else min(rank["search"]["fractions"])
            info = layer_info(model, names, recipe["methods"], cfg["input_size"], io)
            reachable = macs_at(info, smallest, rank["multiple"], total)[0] / total
            if reachable > rank["macs_fraction"]:
                raise LwparError(f"variant {variant}: MAC budget {rank['macs_fraction']:g} is out of reach on {name}: "
                                 f"the smallest ranks its {rank['policy']} policy can choose leave {reachable:.3f} "
                                 f"of the MACs")
