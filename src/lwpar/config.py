"""Load a params file: follow its `extends` chain, merge the files onto each other, fill every key
they leave out from the schema's defaults, and validate the result, with one-line errors naming the
file and the key.

A params file either stands alone or is an overlay: `extends: <path>` (relative to the overlay) names
the file it is merged onto. Mappings merge key by key, anything else (a list, a value) replaces.
"""

from __future__ import annotations

import copy
import json
import math
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lwpar import LwparError

SCHEMA_RESOURCE = "schemas/params.schema.yaml"
EXTENDS = "extends"
MIRROR_ENV = "LWPAR_MIRROR"
WEIGHTS_ENV = "LWPAR_WEIGHTS"

_JSON_TYPES = {
    "object": "mapping", "array": "list", "string": "string", "integer": "integer",
    "number": "number", "boolean": "boolean", "null": "null",
}


class ParamsError(LwparError):
    """A bad params file; `key` is the dotted key at fault (None for the file as a whole)."""

    def __init__(self, message: str, key: str | None = None, problem: str | None = None):
        super().__init__(message)
        self.key, self.problem = key, problem


def _fail(source: str, key: str, problem: str) -> ParamsError:
    return ParamsError(f"{source}: {key}: {problem}" if key else f"{source}: {problem}", key, problem)


def _duplicate_key(node, path=()) -> str | None:
    """The first key given twice in one mapping, as `key.path: ... (lines a and b)`: plain YAML
    loading silently keeps the last one, which would drop a variant or a setting unnoticed."""
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                dotted = ".".join([*path, key])
                return f"{dotted}: key given twice (lines {seen[key]} and {key_node.start_mark.line + 1})"
            seen[key] = key_node.start_mark.line + 1
            found = _duplicate_key(value_node, (*path, key))
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _duplicate_key(item, (*path[:-1], f"{path[-1]}[{i}]") if path else (f"[{i}]",))
            if found:
                return found
    return None


@lru_cache(maxsize=1)
def schema() -> dict:
    text = resources.files("lwpar").joinpath(SCHEMA_RESOURCE).read_text()
    return yaml.safe_load(text)


def _read(path: Path) -> dict:
    """One params file as written, its duplicate keys and YAML errors reported with line numbers."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except IsADirectoryError:
        raise ParamsError(f"{path}: is a folder, not a params file") from None
    try:
        duplicate = _duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))
        if duplicate:
            raise ParamsError(f"{path.name}: {duplicate}")
        params = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}") from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping of params keys, got {type(params).__name__}")
    return params


def layers(path: str | os.PathLike) -> list[tuple[Path, dict]]:
    """The files of a params file's `extends` chain, the base first, each as written (without `extends`)."""
    chain: list[tuple[Path, dict]] = []
    path = Path(path)
    while True:
        if any(os.path.realpath(path) == os.path.realpath(seen) for seen, _ in chain):
            circle = " -> ".join(str(p) for p, _ in [*chain, (path, None)])
            raise ParamsError(f"{chain[0][0].name}: {EXTENDS}: the files extend each other in a circle: {circle}")
        given = _read(path)
        parent = given.pop(EXTENDS, None)
        chain.append((path, given))
        if parent is None:
            return chain[::-1]
        if not isinstance(parent, str) or not parent:
            raise ParamsError(f"{path.name}: {EXTENDS}: expected the path of a params file, got {parent!r}")
        path = path.parent / parent


def merge(base: dict, overlay: dict) -> dict:
    """`overlay` onto `base`: mappings key by key, anything else replaced."""
    merged = dict(base)
    for key, value in overlay.items():
        merged[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def fill_defaults(params: Any, node: dict | None = None) -> Any:
    """A copy of `params` with every key it leaves out taken from the schema's `default` (recursively:
    a default of `{}` is a block whose own keys have defaults). Keys without a default stay missing,
    for validation to name."""
    node = _resolved(schema() if node is None else node)
    if not isinstance(params, dict):
        return params
    properties = node.get("properties", {})
    filled = {}  # in the schema's order, then whatever it does not know (for validation to name)
    for key, sub in properties.items():
        if key in params or "default" in sub:
            filled[key] = fill_defaults(params[key] if key in params else copy.deepcopy(sub["default"]), sub)
    filled.update((key, value) for key, value in params.items() if key not in properties)
    named = node.get("additionalProperties")
    if isinstance(named, dict):
        for key in filled:
            if key not in properties:
                filled[key] = fill_defaults(filled[key], named)
    return filled


def resolve(path: str | os.PathLike) -> tuple[dict, list[tuple[Path, dict]]]:
    """The validated params of a file and its `extends` chain (base first, as written)."""
    chain = layers(path)
    given: dict = {}
    for _, layer in chain:
        given = merge(given, layer)
    params = _without_inapplicable(fill_defaults(given))
    try:
        # keys that do not apply are refused in the file asked for; a base's keys that an overlay
        # makes inapplicable (by changing a variant's policy or method) are dropped silently
        validate_params(params, source=Path(path).name, given=chain[-1][1])
    except ParamsError as exc:
        # name the file that set the faulty key (the last one to set it), else the file asked for
        setter = next((p for p, layer in reversed(chain) if exc.key and _value_at(layer, exc.key, missing=_MISSING)
                       is not _MISSING), Path(path))
        raise _fail(setter.name, exc.key, exc.problem) if exc.key else exc from None
    return params, chain


def load_params(path: str | os.PathLike = "params.yaml") -> dict:
    """Read, merge, complete and validate a params file; raise ParamsError with `<file>: <key.path>: <problem>`."""
    return resolve(path)[0]


def validate_params(params: Any, source: str = "params.yaml", given: dict | None = None) -> None:
    """Schema check of complete params, then the cross-key rules a schema cannot say; `given` (the
    keys the files set, before defaults) is also checked for keys that do not apply where they are."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    errors = list(validator.iter_errors(params))
    if errors:
        # The deepest error is the most specific one; ties go to schema order.
        error = max(errors, key=lambda e: len(e.absolute_path))
        error = _most_specific(error)
        raise _fail(source, *_describe(error))
    for key, problem in _semantic_problems(params):
        raise _fail(source, key, problem)
    for key, problem in _inapplicable(given or {}, params):
        raise _fail(source, key, problem)


# Keys of a rank policy block and of a pruning block that only some policies or kinds read: given
# elsewhere, they would look like settings while changing nothing.
MEASURED_POLICIES = ("search", "greedy", "latency")  # rank policies that score layers on validation
RANK_KEYS = {"fraction": ("ratio",), "energy": ("energy",), "macs_fraction": ("budget", "greedy"),
             "search": MEASURED_POLICIES, "speedup": ("latency",), "target": ("latency",)}
SEARCH_KEYS = {"eps": ("search",), "fractions": ("greedy", "latency")}
PRUNE_KEYS = {"importance": ("structured",), "global_pruning": ("structured",), "round_to": ("structured",),
              "iterative_steps": ("structured",), "budget": ("structured",), "macs_fraction": ("structured",),
              "speedup": ("structured",), "target": ("structured",), "amount": ("unstructured",)}
PRUNE_BUDGET_KEYS = {"macs_fraction": ("macs",), "speedup": ("latency",), "target": ("latency",)}
CP_METHODS = ("cp", "cp4")


def _listed(names) -> str:
    return " and ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} and {names[-1]}"


def _applies(key: str, block: dict, variant: dict) -> bool:
    """Whether a variant's compression step reads `key` of its `block` (rank, search, prune, decompose)."""
    if block == "decompose":
        decompose = variant["decompose"]
        return key != "epc" or ("kxk" in decompose["kinds"] and decompose["methods"]["kxk"] in CP_METHODS)
    if block == "rank":
        return key not in RANK_KEYS or variant["decompose"]["rank"]["policy"] in RANK_KEYS[key]
    if block == "search":
        return key not in SEARCH_KEYS or variant["decompose"]["rank"]["policy"] in SEARCH_KEYS[key]
    prune = variant["prune"]
    return (key not in PRUNE_KEYS or prune["kind"] in PRUNE_KEYS[key]) and \
        (key not in PRUNE_BUDGET_KEYS or prune.get("budget") in PRUNE_BUDGET_KEYS[key])


def _without_inapplicable(params: dict) -> dict:
    """Complete params without the defaults a variant's method or policy does not read, so that the
    configuration shows (and each job's params record) only what takes effect."""
    for variant in (params.get("variants") or {}).values():
        try:
            if "decompose" in variant:
                decompose = variant["decompose"]
                for key in [k for k in decompose if not _applies(k, "decompose", variant)]:
                    del decompose[key]
                rank = decompose["rank"]
                for key in [k for k in rank if not _applies(k, "rank", variant)]:
                    del rank[key]
                if "search" in rank:
                    for key in [k for k in rank["search"] if not _applies(k, "search", variant)]:
                        del rank["search"][key]
            if "prune" in variant:
                for key in [k for k in variant["prune"] if not _applies(k, "prune", variant)]:
                    del variant["prune"][key]
        except (KeyError, TypeError, AttributeError):
            continue  # a malformed variant: validation names what is wrong with it
    return params


def _inapplicable(given: dict, params: dict):
    """Keys set where they change nothing: an `epc` block without CP decomposition, `search` under a
    policy that measures nothing, a structured-pruning key on unstructured pruning, and so on."""
    for name, variant in (given.get("variants") or {}).items():
        resolved = params["variants"][name]
        decompose = variant.get("decompose")
        if isinstance(decompose, dict):
            kinds, kxk = resolved["decompose"]["kinds"], resolved["decompose"]["methods"]["kxk"]
            if "epc" in decompose and not _applies("epc", "decompose", resolved):
                yield (f"variants.{name}.decompose.epc",
                       f"applies only to CP decomposition of k x k convolutions (kinds with kxk, methods.kxk: cp or "
                       f"cp4); this variant uses {kxk if 'kxk' in kinds else 'no k x k method'}")
            rank = decompose.get("rank") if isinstance(decompose.get("rank"), dict) else {}
            policy = resolved["decompose"]["rank"]["policy"]
            for key in rank:
                if not _applies(key, "rank", resolved):
                    yield (f"variants.{name}.decompose.rank.{key}",
                           f"not read by rank policy {policy!r} (only by {_listed(RANK_KEYS[key])})")
            search = rank.get("search") if isinstance(rank.get("search"), dict) else {}
            for key in search:
                if "search" in resolved["decompose"]["rank"] and not _applies(key, "search", resolved):
                    yield (f"variants.{name}.decompose.rank.search.{key}",
                           f"not read by rank policy {policy!r} (only by {_listed(SEARCH_KEYS[key])})")
        prune = variant.get("prune")
        if isinstance(prune, dict):
            for key in prune:
                if not _applies(key, "prune", resolved):
                    kind = resolved["prune"]["kind"]
                    yield (f"variants.{name}.prune.{key}",
                           f"not read by {kind} pruning (only by {_listed(PRUNE_KEYS[key])})"
                           if kind not in PRUNE_KEYS[key] else f"not read by budget {resolved['prune']['budget']!r} "
                           f"(only by {_listed(PRUNE_BUDGET_KEYS[key])})")


def _most_specific(error):
    # For oneOf/anyOf the context holds the branch errors; the deepest explains best.
    while error.context:
        error = max(error.context, key=lambda e: len(e.absolute_path))
    return error


def _dotted(parts) -> str:
    return ".".join(str(p) for p in parts)


def _describe(error) -> tuple[str, str]:
    path = list(error.absolute_path)
    value = error.instance
    kind = error.validator
    if kind == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in value if k not in allowed)
        hint = f" (allowed: {', '.join(sorted(allowed))})" if allowed else ""
        return _dotted(path + [extra[0]]), f"unknown key{hint}"
    if kind == "required":
        missing = [k for k in error.validator_value if k not in value]
        return _dotted(path + [missing[0]]), "missing key"
    if kind == "type":
        expected = error.validator_value
        expected = [expected] if isinstance(expected, str) else expected
        names = " or ".join(_JSON_TYPES.get(t, t) for t in expected)
        return _dotted(path), f"expected {names}, got {value!r}"
    if kind == "enum":
        options = ", ".join(repr(v) for v in error.validator_value)
        return _dotted(path), f"expected one of {options}, got {value!r}"
    if kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[kind]
        return _dotted(path), f"expected a value {op} {error.validator_value}, got {value!r}"
    if kind == "pattern":
        return _dotted(path), f"{value!r} does not match {error.validator_value!r}"
    if kind in ("minItems", "maxItems"):
        return _dotted(path), f"expected {kind[:3]} {error.validator_value} items, got {len(value)}"
    if kind == "uniqueItems":
        return _dotted(path), f"duplicate entries in {value!r}"
    if kind == "minProperties":
        return _dotted(path), "must not be empty"
    if kind == "not" and set(error.validator_value) == {"required"}:
        keys = " and ".join(error.validator_value["required"])
        return _dotted(path), f"has both {keys}: give at most one"
    return _dotted(path), error.message


def _semantic_problems(params: dict):
    for name, ds in params["datasets"].items():
        if not math.isclose(sum(ds["fractions"]), 1.0, abs_tol=1e-6):
            yield f"datasets.{name}.fractions", f"must sum to 1, got {sum(ds['fractions']):g}"
        if ds["kind"] == "pa100k" and ds["split"] != "standard":
            yield f"datasets.{name}.split", "PA-100K has no person ids: only 'standard' is possible"
    for name, model in params["models"].items():
        if model["backbone"] == "bn_inception" and any(v % 32 for v in model["input_size"]):
            # Its stride-2 blocks concatenate a padded conv with a ceil-mode pool: sizes agree only then.
            yield f"models.{name}.input_size", f"bn_inception needs multiples of 32, got {model['input_size']}"
    for i, name in enumerate(params["experiment"]["datasets"]):
        if name not in params["datasets"]:
            yield f"experiment.datasets[{i}]", f"unknown dataset {name!r} (defined: {', '.join(params['datasets'])})"
    for i, name in enumerate(params["experiment"]["variants"]):
        if name not in params["variants"]:
            yield f"experiment.variants[{i}]", f"unknown variant {name!r} (defined: {', '.join(params['variants']) or 'none'})"
    for i, name in enumerate(params["experiment"]["int8"]):
        if name != "baseline" and name not in params["experiment"]["variants"]:
            yield f"experiment.int8[{i}]", f"{name!r} is neither 'baseline' nor a variant of the experiment"
    for i, name in enumerate(params["experiment"]["targets"]):
        if name not in params["profile"]["targets"]:
            yield f"experiment.targets[{i}]", f"unknown target {name!r} (defined: {', '.join(params['profile']['targets'])})"
    for i, name in enumerate(params["experiment"]["models"]):
        if name not in params["models"]:
            yield f"experiment.models[{i}]", f"unknown model {name!r} (defined: {', '.join(params['models'])})"
    for name, target in params["profile"]["targets"].items():
        if bool(target["copy_command"]) != bool(target["remote_dir"]):
            yield f"profile.targets.{name}.remote_dir", "copy_command and remote_dir go together (both set or both null)"
    for name in params["experiment"]["variants"]:
        chain, step = [name], params["variants"].get(name, {}).get("base")
        while step is not None and step not in chain:
            chain.append(step)
            step = params["variants"].get(step, {}).get("base")
        if step is not None:
            yield f"variants.{name}.base", f"variants start from each other in a circle: {' -> '.join([*chain, step])}"
        elif len(chain) > 1 and any(v not in params["experiment"]["variants"] for v in chain[1:]):
            missing = next(v for v in chain[1:] if v not in params["experiment"]["variants"])
            yield f"variants.{name}.base", f"{missing!r} must be a variant of the experiment (it is built first)"
        elif step is None and name in params["variants"] and matched_control(params, name) is None \
                and not is_control(params["variants"][name]):
            stages = len(schedule(params, name))
            yield (f"experiment.variants[{params['experiment']['variants'].index(name)}]",
                   f"{name!r} has no matched control: the experiment needs a variant without compression whose "
                   f"fine-tuning schedule is the same ({stages} stage{'s' if stages > 1 else ''}: the `finetune` keys "
                   f"of the variant and of each base)")
    for name in params["experiment"]["variants"]:
        variant = params["variants"].get(name, {})
        rank, prune = variant.get("decompose", {}).get("rank", {}), variant.get("prune", {})
        for key, block in (("decompose.rank", rank), ("prune", prune)):
            if (block.get("policy") == "latency" or block.get("budget") == "latency") and \
                    block["target"] not in params["experiment"]["targets"]:
                yield (f"variants.{name}.{key}.target",
                       f"{block['target']!r} is not one of experiment.targets ({', '.join(params['experiment']['targets'])}): "
                       f"the profile would not measure what the plan predicts")
    for name, variant in params["variants"].items():
        rank = variant.get("decompose", {}).get("rank", {})
        source = rank.get("search", {}).get("sensitivity_from")
        if source is None:
            continue
        other = params["variants"].get(source, {}).get("decompose", {})
        if other.get("rank", {}).get("policy") not in MEASURED_POLICIES:
            yield (f"variants.{name}.decompose.rank.search.sensitivity_from",
                   f"{source!r} is not a decomposition variant with a measured rank policy ({', '.join(MEASURED_POLICIES)})")
        elif rank["policy"] == "latency" and (other["rank"]["policy"] not in ("greedy", "latency")
                                              or other["rank"]["search"].get("fractions") != rank["search"]["fractions"]
                                              or other["rank"]["multiple"] != rank["multiple"]):
            yield (f"variants.{name}.decompose.rank.search.sensitivity_from",
                   f"{source!r} does not score the ranks this latency plan times (it needs a greedy or latency "
                   f"policy with the same search.fractions and multiple)")
        elif (any(other.get(k) != variant["decompose"].get(k) for k in ("kinds", "methods", "include_first", "include_heads", "epc"))
              or params["variants"][source]["base"] != variant["base"]):
            yield (f"variants.{name}.decompose.rank.search.sensitivity_from",
                   f"{source!r} factorizes other layers or by other methods: its measurements do not apply")


def is_control(recipe: dict) -> bool:
    """A variant with no compression step: its fine-tuning applied to the uncompressed start model."""
    return "decompose" not in recipe and "prune" not in recipe


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
    name = variant.removesuffix("+int8")
    if name == "baseline" or is_control(params["variants"][name]):
        return None
    wanted = schedule(params, name)
    return next((c for c in params["experiment"]["variants"]
                 if is_control(params["variants"][c]) and schedule(params, c) == wanted), None)


def mirror_dir(params: dict) -> Path | None:
    """The archive mirror: the environment variable wins over params.yaml."""
    value = os.environ.get(MIRROR_ENV) or params["paths"]["mirror"]
    return Path(value) if value else None


def weights_dir(params: dict) -> Path | None:
    """Where pretrained backbone files are looked for: LWPAR_WEIGHTS, paths.weights, else the mirror."""
    value = os.environ.get(WEIGHTS_ENV) or params["paths"]["weights"]
    return Path(value) if value else mirror_dir(params)


def schema_keys(node: dict | None = None, prefix: str = "") -> list[tuple[str, dict]]:
    """Every params key the schema defines, as (dotted path, its schema), parents before children;
    `*` stands for a user-chosen name (a dataset, model, variant or target)."""
    node = schema() if node is None else node
    keys = []
    for key, sub in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        keys.append((path, sub))
        keys += schema_keys(_resolved(sub), f"{path}.")
    named = node.get("additionalProperties")
    if isinstance(named, dict):
        keys += schema_keys(_resolved(named), f"{prefix}*.")
    return keys


def _resolved(node: dict) -> dict:
    ref = node.get("$ref")
    return schema()["$defs"][ref.rsplit("/", 1)[1]] if ref else node


def _allowed(node: dict) -> str:
    node = _resolved(node)
    if "enum" in node:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    if "oneOf" in node:
        return " or ".join(_allowed(branch) for branch in node["oneOf"])
    kinds = node.get("type", "object")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    text = " or ".join(_JSON_TYPES.get(k, k) for k in kinds)
    bounds = [f"{op} {node[k]}" for k, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                                            ("exclusiveMaximum", "<")) if k in node]
    if "items" in node and "array" in kinds:
        text += f" of {_allowed(node['items'])}"
    return text + (f" ({', '.join(bounds)})" if bounds else "")


_MISSING = object()


def _value_at(params: dict, path: str, missing=None):
    """The value at a dotted path (`*` takes the first entry, `name[i]` an item), `missing` when absent."""
    value = params
    for part in path.split("."):
        part, _, index = part.partition("[")
        if not isinstance(value, dict) or not value or (part != "*" and part not in value):
            return missing
        value = next(iter(value.values())) if part == "*" else value[part]
        if index:
            i = int(index.rstrip("]"))
            if not isinstance(value, list) or i >= len(value):
                return missing
            value = value[i]
    return value


def reference_markdown(params: dict, source: str = "params.yaml") -> str:
    """docs/configuration.md: every key with its allowed values, its default, its value in `source`
    and its meaning."""
    lines = ["# Configuration", "",
             "Every params key, generated from the schema (`src/lwpar/schemas/params.schema.yaml`) by",
             "`lwpar config --reference > docs/configuration.md`; a test fails when this file is stale.",
             "A params file sets only what differs from the defaults (a key without a default must be",
             "given), and an overlay (`extends: <file>`) only what differs from the file it extends;",
             "`lwpar config --params <file>` prints the merged, validated result. The value column is",
             f"`{source}`'s after merging, the default experiment's; for a named entry (`*`: a dataset, model,",
             "variant or target) it is the first entry's, blank where that entry has no such block.", ""]
    for path, node in schema_keys():
        if "." not in path:
            section = "properties" in _resolved(node) or isinstance(_resolved(node).get("additionalProperties"), dict)
            lines += ["", f"## `{path}`", "", *([node.get("description", ""), ""] if section else []),
                      "| key | allowed | default | value | meaning |", "|---|---|---|---|---|"]
            if section:
                continue
        value = _value_at(params, path, missing=_MISSING)
        shown = "" if isinstance(value, dict) or value is _MISSING else f"`{json.dumps(value)}`"
        default = node.get("default", _MISSING)
        default = "*required*" if default is _MISSING else "" if isinstance(default, dict) else f"`{json.dumps(default)}`"
        lines.append(f"| `{path}` | {_allowed(node)} | {default} | {shown} | {node.get('description', '')} |")
    return "\n".join(lines).replace("\n\n\n", "\n\n") + "\n"


def add_arguments(parser) -> None:
    parser.add_argument("--reference", action="store_true",
                        help="print docs/configuration.md (every key, its default and meaning) instead")
    parser.add_argument("--sources", action="store_true",
                        help="print the files of the extends chain, base first, instead")


def run(args, params) -> None:
    """Print the merged, validated configuration of --params (what every stage of the run reads)."""
    if args.reference:
        print(reference_markdown(params, args.params), end="")
    elif args.sources:
        print("\n".join(os.path.normpath(path) for path, _ in layers(args.params)))
    else:
        print(f"# {args.params}, merged onto the files it extends and completed from the schema's defaults")
        print(yaml.dump(params, Dumper=_WrittenOut, sort_keys=False, width=120, default_flow_style=None), end="")


class _WrittenOut(yaml.SafeDumper):
    """Writes every value where it applies, without anchors and aliases for values that overlays share."""

    def ignore_aliases(self, data) -> bool:
        return True
