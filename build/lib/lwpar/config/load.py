"""Load a params file: follow its `extends` chain, merge the files onto each other, fill every key
they leave out from the schema's defaults, and validate the result, with one-line errors naming the
file and the key.

A params file either stands alone or is an overlay: `extends: <path>` (relative to the overlay) names
the file it is merged onto. Mappings merge key by key, anything else (a list, a value) replaces.
"""

from __future__ import annotations

import copy
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lwpar.compress.recipes import (EPC_METHODS, prune_key_readers, rank_key_readers, reads,
                                   search_key_readers)
from lwpar.core.errors import LwparError

SCHEMA_RESOURCE = "config/params.schema.yaml"
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
    from lwpar.config.checks import problems

    for key, problem in problems(params):
        raise _fail(source, key, problem)
    for key, problem in _inapplicable(given or {}, params):
        raise _fail(source, key, problem)


def _listed(names, conjunction: str = "and") -> str:
    return f" {conjunction} ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} {conjunction} {names[-1]}"


def _without_inapplicable(params: dict) -> dict:
    """Complete params without the defaults a variant's method or policy does not read, so that the
    configuration shows (and each job's params record) only what takes effect."""
    for variant in (params.get("variants") or {}).values():
        try:
            if "decompose" in variant:
                decompose = variant["decompose"]
                for key in [k for k in decompose if not reads(variant, "decompose", k)]:
                    del decompose[key]
                rank = decompose["rank"]
                for key in [k for k in rank if not reads(variant, "rank", k)]:
                    del rank[key]
                if "search" in rank:
                    for key in [k for k in rank["search"] if not reads(variant, "search", k)]:
                        del rank["search"][key]
            if "prune" in variant:
                for key in [k for k in variant["prune"] if not reads(variant, "prune", k)]:
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
            if "epc" in decompose and not reads(resolved, "decompose", "epc"):
                yield (f"variants.{name}.decompose.epc",
                       f"applies only to CP-ALS decomposition of k x k convolutions (kinds with kxk, methods.kxk: "
                       f"{_listed(EPC_METHODS, 'or')}); this variant uses {kxk if 'kxk' in kinds else 'no k x k method'}")
            rank = decompose.get("rank") if isinstance(decompose.get("rank"), dict) else {}
            policy = resolved["decompose"]["rank"]["policy"]
            for key in rank:
                if not reads(resolved, "rank", key):
                    yield (f"variants.{name}.decompose.rank.{key}",
                           f"not read by rank policy {policy!r} (only by {_listed(rank_key_readers(key))})")
            search = rank.get("search") if isinstance(rank.get("search"), dict) else {}
            for key in search:
                if "search" in resolved["decompose"]["rank"] and not reads(resolved, "search", key):
                    yield (f"variants.{name}.decompose.rank.search.{key}",
                           f"not read by rank policy {policy!r} (only by {_listed(search_key_readers(key))})")
        prune = variant.get("prune")
        if isinstance(prune, dict):
            for key in prune:
                if not reads(resolved, "prune", key):
                    kind = resolved["prune"]["kind"]
                    kinds, budgets = prune_key_readers(key)
                    yield (f"variants.{name}.prune.{key}",
                           f"not read by {kind} pruning (only by {_listed(kinds)})" if kind not in kinds
                           else f"not read by budget {resolved['prune']['budget']!r} (only by {_listed(budgets)})")


    # a dump of a complete configuration (`lwpar config`) holds the default: only a changed one is refused
    keep_schema = schema()["properties"]["quantize"]["properties"]["keep_float"]
    given_keep = (given.get("quantize") or {}).get("keep_float")
    if isinstance(given_keep, dict) and fill_defaults(given_keep, keep_schema) != fill_defaults({}, keep_schema) \
            and not params["experiment"]["mixed"]:
        yield ("quantize.keep_float", "read only for the experiment.mixed models (<name>+mixed; <name>+int8 stays "
                                      "fully INT8), and experiment.mixed names none")
    elif params["experiment"]["mixed"] and params["quantize"]["mode"] == "dynamic":
        yield "quantize.mode", "mixed precision by measured error (experiment.mixed) applies only to static INT8"
    elif params["experiment"]["mixed"] and not params["quantize"]["error_images"]:
        yield ("quantize.error_images", "mixed precision (experiment.mixed) needs >= 1: the nodes kept in FP32 are "
                                        "where the measured error is worst")


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


def mirror_dir(params: dict) -> Path | None:
    """The archive mirror: the environment variable wins over params.yaml."""
    value = os.environ.get(MIRROR_ENV) or params["paths"]["mirror"]
    return Path(value) if value else None


def weights_dir(params: dict) -> Path | None:
    """Where pretrained backbone files are looked for: LWPAR_WEIGHTS, paths.weights, else the mirror."""
    value = os.environ.get(WEIGHTS_ENV) or params["paths"]["weights"]
    return Path(value) if value else mirror_dir(params)


def _resolved(node: dict) -> dict:
    ref = node.get("$ref")
    return schema()["$defs"][ref.rsplit("/", 1)[1]] if ref else node


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
