"""What a variant's recipe means, as plain facts (no torch, no numpy): which decomposition methods read
the `epc` block, which keys each rank policy and each pruning kind and budget read, which policies
measure accuracy or time, what a recipe is called in the tables, and which variant is a recipe's
matched control.

The configuration drops and refuses keys by these facts, the pipeline plans its measurement jobs by
them and the report labels its rows by them; the method and policy registries
(`compress.decompose.methods`, `compress.ranks`) are checked against them by the tests, so the
facts and the code that acts on them cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from lwpar.core.names import form_suffix, fp32_name, quantized_form

# Decomposition methods, per layer kind (the schema's enums are checked against these).
KXK_METHODS = ("cp", "cp4", "tucker2", "spatial_svd", "svd")
POINTWISE_METHODS = ("svd",)
# What a factorization fits (`decompose.fit`): the kernel, the layer's output in the calibration
# statistics' metric (which then must be measured on the start model: the calibrate stage), or that
# output from the inputs the partly compressed model gives the layer (which also runs the images).
FITS = ("weights", "covariance", "sequential")
CALIBRATED_FITS = ("covariance", "sequential")
RUNS_IMAGES_FITS = ("sequential",)
# Methods that read the `epc` block: `cp` runs CP-ALS capped at `epc.als_iter`, then EPC if enabled;
# `cp4` runs tensorly's parafac on the 4-way kernel (100 iterations) and reads none of it.
EPC_METHODS = ("cp",)


@dataclass(frozen=True)
class RankPolicy:
    reads: tuple[str, ...] = ()          # the optional `rank` keys it reads (below: OPTIONAL_RANK_KEYS)
    search_reads: tuple[str, ...] = ()   # the optional `rank.search` keys it reads
    measured: bool = False               # scores layers on validation: needs the sensitivity stage
    timed: bool = False                  # allocates by measured latency: needs a latency table


RANK_POLICIES = {
    "ratio": RankPolicy(reads=("fraction",)),
    "energy": RankPolicy(reads=("energy",)),
    "evbmf": RankPolicy(),
    "budget": RankPolicy(reads=("macs_fraction",)),
    "search": RankPolicy(reads=("search",), search_reads=("eps",), measured=True),
    "greedy": RankPolicy(reads=("macs_fraction", "search"), search_reads=("fractions",), measured=True),
    "latency": RankPolicy(reads=("speedup", "target", "search"), search_reads=("fractions",), measured=True,
                          timed=True),
}
# `rank` and `rank.search` keys that only some policies read; every policy reads the others.
OPTIONAL_RANK_KEYS = ("fraction", "energy", "macs_fraction", "search", "speedup", "target")
OPTIONAL_SEARCH_KEYS = ("eps", "fractions")
MEASURED_POLICIES = tuple(name for name, policy in RANK_POLICIES.items() if policy.measured)
# Policies whose per-layer scores at `search.fractions` a latency plan can share (`sensitivity_from`).
CURVE_POLICIES = tuple(name for name, policy in RANK_POLICIES.items() if "fractions" in policy.search_reads)

# Pruning: the keys each kind and each structured budget read (every other key is always read).
PRUNE_KINDS = {"structured": ("importance", "global_pruning", "round_to", "iterative_steps", "budget",
                              "macs_fraction", "speedup", "target", "reconstruct"),
               "unstructured": ("amount",)}
PRUNE_BUDGETS = {"macs": ("macs_fraction",), "latency": ("speedup", "target")}
TIMED_PRUNE_BUDGETS = ("latency",)


def _readers(table: dict, key: str) -> tuple[str, ...]:
    return tuple(name for name, keys in table.items() if key in keys)


def rank_key_readers(key: str) -> tuple[str, ...]:
    """The rank policies that read an optional `rank` key."""
    return tuple(name for name, policy in RANK_POLICIES.items() if key in policy.reads)


def search_key_readers(key: str) -> tuple[str, ...]:
    return tuple(name for name, policy in RANK_POLICIES.items() if key in policy.search_reads)


def reads(recipe: dict, block: str, key: str) -> bool:
    """Whether a variant's compression step reads `key` of `block` (decompose, rank, search, prune);
    `recipe`: the variant's complete recipe (defaults filled)."""
    if block == "decompose":
        decompose = recipe["decompose"]
        return key != "epc" or ("kxk" in decompose["kinds"] and decompose["methods"]["kxk"] in EPC_METHODS)
    if block in ("rank", "search"):
        policy = RANK_POLICIES[recipe["decompose"]["rank"]["policy"]]
        optional, read = (OPTIONAL_RANK_KEYS, policy.reads) if block == "rank" else (OPTIONAL_SEARCH_KEYS,
                                                                                    policy.search_reads)
        return key not in optional or key in read
    prune = recipe["prune"]
    by_kind = key not in _all(PRUNE_KINDS) or key in PRUNE_KINDS[prune["kind"]]
    by_budget = key not in _all(PRUNE_BUDGETS) or key in PRUNE_BUDGETS.get(prune.get("budget"), ())
    return by_kind and by_budget


def _all(table: dict) -> set[str]:
    return {key for keys in table.values() for key in keys}


def prune_key_readers(key: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the pruning kinds, the structured budgets) that read a `prune` key."""
    return _readers(PRUNE_KINDS, key), _readers(PRUNE_BUDGETS, key)


def is_measured(recipe: dict) -> bool:
    """A decomposition whose ranks come from measured per-layer accuracy (the sensitivity stage)."""
    rank = recipe.get("decompose", {}).get("rank", {})
    return rank.get("policy") in MEASURED_POLICIES


def is_calibrated(recipe: dict) -> bool:
    """A compression step that reads the start model's calibration statistics: a decomposition that
    fits its layers' outputs, a pruning that refits the layers whose inputs it removed."""
    return recipe.get("decompose", {}).get("fit") in CALIBRATED_FITS or bool(recipe.get("prune", {}).get("reconstruct"))


# Layer kinds a decomposition selects (the schema's `decompose.kinds` enum is checked against these).
LAYER_KINDS = ("kxk", "pointwise", "linear")
# How a calibration selection word names the optional layer groups: `include_first`, `include_heads`.
SELECTION_EXTRAS = {"first": ("include_first", True), "heads": ("include_heads", True),
                    "heads-only": ("include_heads", "only")}


def calibration_selection(recipe: dict) -> str:
    """The layers a calibrated recipe needs statistics of, as one word: `prune` (a reconstructing
    pruning: every dense layer outside the heads but the first convolution), or the decomposed kinds
    joined by `+`, then `first`, `heads` or `heads-only` when included. The calibrate job is keyed by
    these words, not by variant names, so variants selecting the same layers share its statistics and
    editing the experiment's variant list does not measure them again."""
    if "prune" in recipe:
        return "prune"
    d = recipe["decompose"]
    heads = {True: ["heads"], "only": ["heads-only"]}.get(d["include_heads"], [])
    return "+".join([*d["kinds"], *(["first"] if d["include_first"] else []), *heads])


def parse_calibration_selection(word: str) -> dict | None:
    """A selection word back as `{kinds, include_first, include_heads}`; None for `prune`; ValueError
    naming the part it does not know."""
    if word == "prune":
        return None
    parts = word.split("+")
    unknown = [p for p in parts if p and p not in LAYER_KINDS and p not in SELECTION_EXTRAS]
    kinds = [p for p in parts if p in LAYER_KINDS]
    if unknown or not kinds:
        raise ValueError(f"{word!r}: {'unknown ' + ', '.join(unknown) if unknown else 'no layer kind'} (kinds: "
                         f"{', '.join(LAYER_KINDS)}; then {', '.join(SELECTION_EXTRAS)}; or prune)")
    selection = {"kinds": kinds, "include_first": False, "include_heads": False}
    selection.update(SELECTION_EXTRAS[p] for p in parts if p in SELECTION_EXTRAS)
    return selection


def runs_images(recipe: dict) -> bool:
    """A decomposition that runs the calibration images itself (the sequential fit)."""
    return recipe.get("decompose", {}).get("fit") in RUNS_IMAGES_FITS


def reconstructs_blocks(recipe: dict) -> bool:
    """A variant whose changed blocks are trained towards the uncompressed model's before fine-tuning."""
    return bool(recipe.get("blockwise", {}).get("steps"))


def timing_step(recipe: dict) -> dict | None:
    """The recipe's block that is planned by measured latency on a target (its `target` key), if any."""
    rank = recipe.get("decompose", {}).get("rank", {})
    if rank.get("policy") in RANK_POLICIES and RANK_POLICIES[rank["policy"]].timed:
        return rank
    prune = recipe.get("prune", {})
    return prune if prune.get("budget") in TIMED_PRUNE_BUDGETS else None


# Controls and schedules

def is_control(recipe: dict) -> bool:
    """A variant with no compression step: its fine-tuning applied to the uncompressed start model."""
    return "decompose" not in recipe and "prune" not in recipe


# the `quantize` keys that quantization-aware fine-tuning trains for
QAT_KEYS = ("per_channel", "reduce_range", "activations", "calibration_images")
# finetune keys that change what is scored, not how the model is trained
SCORING_ONLY = {"score_before_recalibration"}


def schedule(params: dict, variant: str) -> list[dict]:
    """The fine-tuning recipes a variant's model went through, first stage first (its `base` chain),
    without the keys that only add a score."""
    chain = []
    while variant is not None:
        chain.append({k: v for k, v in params["variants"][variant]["finetune"].items() if k not in SCORING_ONLY})
        variant = params["variants"][variant]["base"]
    return chain[::-1]


def matched_control(params: dict, variant: str) -> str | None:
    """The experiment's control whose schedule is exactly the variant's, so that a delta against it
    measures the compression and not the extra training; None for a control or the baseline."""
    name = fp32_name(variant)
    if name == "baseline" or is_control(params["variants"][name]):
        return None
    wanted = schedule(params, name)
    return next((c for c in params["experiment"]["variants"]
                 if is_control(params["variants"][c]) and schedule(params, c) == wanted), None)


def trains_for_int8(params: dict, variant: str) -> bool:
    """Whether any fine-tuning stage of the variant was quantization-aware (`finetune.qat`)."""
    return any(stage.get("qat") for stage in schedule(params, fp32_name(variant)))


def control_reference(params: dict, variant: str) -> str | None:
    """What a variant's mA is read against: its matched control; for a quantized form of a
    quantization-aware variant, the control's same form (both trained for it)."""
    control = matched_control(params, variant)
    if control is not None and quantized_form(variant) and trains_for_int8(params, variant):
        return control + form_suffix(variant)
    return control


# Labels

def label(params: dict, name: str, recipe: dict) -> str:
    """What a recipe does, without its budget: the name that groups one method's budgets in the tables
    and plots ("cp-epc+svd (greedy, ALS 50)", "prune structured l2", "control")."""
    # a variant read after BatchNorm re-estimation alone is another point than the fine-tuned one
    untuned = recipe.get("finetune", {}).get("epochs") == 0
    # quantization-aware, in any stage of its chain (as `trains_for_int8` reads it): another point too
    aware = bool(recipe.get("finetune", {}).get("qat")) or bool(recipe.get("base") and trains_for_int8(params, recipe["base"]))
    if "prune" in recipe:
        prune = recipe["prune"]
        qualifiers = [q for q, on in (("latency", prune.get("budget") in TIMED_PRUNE_BUDGETS),  # planned another way
                                      ("reconstructed", prune.get("reconstruct")),
                                      ("block-wise", reconstructs_blocks(recipe)), ("no fine-tuning", untuned),
                                      ("quantization-aware", aware)) if on]
        return f"prune {prune['kind']} {prune.get('importance', 'l1')}" + (f" ({', '.join(qualifiers)})" if qualifiers
                                                                            else "")  # unstructured: L1
    if "decompose" not in recipe:
        return "control (quantization-aware)" if aware else "control"
    d = recipe["decompose"]
    kxk_method = d["methods"]["kxk"]
    takes_epc = "kxk" in d["kinds"] and kxk_method in EPC_METHODS
    epc = d.get("epc", {}) if takes_epc else {}
    kxk = f"{kxk_method}{'-epc' if epc.get('enabled') else ''}"
    parts = [kxk if "kxk" in d["kinds"] else None, d["methods"]["pointwise"] if {"pointwise", "linear"} & set(d["kinds"]) else None]
    stages = len(schedule(params, name))
    chain = f", {stages} stages" if stages > 1 else ""
    # CP's outcome depends on how long ALS ran (the dense sweep), so its cap is part of the method
    als = f", ALS {epc['als_iter']}" if epc.get("als_iter") else ""
    fit = f", {d['fit']} fit" if d.get("fit") in CALIBRATED_FITS else ""
    blocks = ", block-wise" if reconstructs_blocks(recipe) else ""
    tuned = ", no fine-tuning" if untuned else ", quantization-aware" if aware else ""
    return f"{'+'.join(p for p in parts if p)} ({d['rank']['policy']}{als}{fit}{blocks}{tuned}{chain})"


def method_label(params: dict | None, variant: str) -> str:
    """A variant's `label` (a quantized form is its source's with +int8 or +mixed; the baseline is itself)."""
    name, suffix = fp32_name(variant), form_suffix(variant)
    recipe = params["variants"].get(name) if params else None
    if name == "baseline" or recipe is None:
        return name + suffix
    return label(params, name, recipe) + suffix


def mac_planned_label(params: dict, variant: str) -> str | None:
    """The label of a latency-planned variant's MAC-planned counterpart: the same pruning with a MAC
    budget, or the same decomposition with the `greedy` rank policy (the same sensitivity measurement,
    spent by MACs instead of measured milliseconds). None for other variants."""
    name = fp32_name(variant)
    recipe = params["variants"].get(name, {})
    if recipe.get("prune", {}).get("budget") in TIMED_PRUNE_BUDGETS:
        return label(params, name, {**recipe, "prune": {**recipe["prune"], "budget": "macs"}})
    rank = recipe.get("decompose", {}).get("rank", {})
    if rank.get("policy") in RANK_POLICIES and RANK_POLICIES[rank["policy"]].timed:
        return label(params, name, {**recipe, "decompose": {**recipe["decompose"], "rank": {**rank, "policy": "greedy"}}})
    return None
