"""Load params.yaml and validate it against the JSON schema, with one-line errors naming the key."""

from __future__ import annotations

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
MIRROR_ENV = "LWPAR_MIRROR"
WEIGHTS_ENV = "LWPAR_WEIGHTS"

_JSON_TYPES = {
    "object": "mapping", "array": "list", "string": "string", "integer": "integer",
    "number": "number", "boolean": "boolean", "null": "null",
}


class ParamsError(LwparError):
    pass


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


def load_params(path: str | os.PathLike = "params.yaml") -> dict:
    """Read and validate a params file; raise ParamsError with `<file>: <key.path>: <problem>`."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    try:
        duplicate = _duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))
        if duplicate:
            raise ParamsError(f"{path.name}: {duplicate}")
        params = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}") from None
    validate_params(params, source=path.name)
    return params


def validate_params(params: Any, source: str = "params.yaml") -> None:
    """Schema check, then the cross-key rules a schema cannot say."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    errors = list(validator.iter_errors(params))
    if errors:
        # The deepest error is the most specific one; ties go to schema order.
        error = max(errors, key=lambda e: len(e.absolute_path))
        error = _most_specific(error)
        key, problem = _describe(error)
        raise ParamsError(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")
    for key, problem in _semantic_problems(params):
        raise ParamsError(f"{source}: {key}: {problem}")


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
    for name, variant in params["variants"].items():
        rank = variant.get("decompose", {}).get("rank", {})
        source = rank.get("search", {}).get("sensitivity_from")
        if source is None:
            continue
        other = params["variants"].get(source, {}).get("decompose", {})
        if other.get("rank", {}).get("policy") not in ("search", "greedy"):
            yield (f"variants.{name}.decompose.rank.search.sensitivity_from",
                   f"{source!r} is not a decomposition variant with a measured rank policy (search or greedy)")
        elif (any(other[k] != variant["decompose"][k] for k in ("kinds", "methods", "include_first", "include_heads", "epc"))
              or params["variants"][source]["base"] != variant["base"]):
            yield (f"variants.{name}.decompose.rank.search.sensitivity_from",
                   f"{source!r} factorizes other layers or by other methods: its measurements do not apply")


def is_control(recipe: dict) -> bool:
    """A variant with no compression step: its fine-tuning applied to the uncompressed start model."""
    return "decompose" not in recipe and "prune" not in recipe


def schedule(params: dict, variant: str) -> list[dict]:
    """The fine-tuning recipes a variant's model went through, first stage first (its `base` chain)."""
    chain = []
    while variant is not None:
        chain.append(params["variants"][variant]["finetune"])
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


def _value_at(params: dict, path: str):
    """The value at a dotted path, `*` taking the first entry; None when absent."""
    value = params
    for part in path.split("."):
        if not isinstance(value, dict) or not value:
            return None
        value = next(iter(value.values())) if part == "*" else value.get(part)
    return value


def reference_markdown(params: dict, source: str = "params.yaml") -> str:
    """docs/configuration.md: every key with its allowed values, its value in `source` and its meaning."""
    lines = ["# Configuration", "",
             f"Every key of `{source}`, generated from the schema (`src/lwpar/schemas/params.schema.yaml`) by",
             "`python -m lwpar.config reference > docs/configuration.md`; a test fails when this file is stale.",
             f"Every key is required. The value column is `{source}`'s, the default experiment's; for a",
             "named entry (`*`: a dataset, model, variant or target) it is the first entry's.", ""]
    for path, node in schema_keys():
        if "." not in path:
            section = "properties" in _resolved(node) or isinstance(_resolved(node).get("additionalProperties"), dict)
            lines += ["", f"## `{path}`", "", *([node.get("description", ""), ""] if section else []),
                      "| key | allowed | value | meaning |", "|---|---|---|---|"]
            if section:
                continue
        value = _value_at(params, path)
        shown = "" if isinstance(value, dict) else f"`{json.dumps(value)}`"
        lines.append(f"| `{path}` | {_allowed(node)} | {shown} | {node.get('description', '')} |")
    return "\n".join(lines).replace("\n\n\n", "\n\n") + "\n"


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] != ["reference"]:
        raise SystemExit("usage: python -m lwpar.config reference [PARAMS]  (prints docs/configuration.md)")
    print(reference_markdown(load_params(sys.argv[2] if len(sys.argv) > 2 else "params.yaml"),
                             sys.argv[2] if len(sys.argv) > 2 else "params.yaml"), end="")
