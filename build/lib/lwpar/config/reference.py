"""docs/configuration.md, generated from the schema: every key, its allowed values, its default, its
value in the default experiment and its meaning."""

from __future__ import annotations

import json

from lwpar.config.load import _JSON_TYPES, _MISSING, _resolved, _value_at, schema


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


def reference_markdown(params: dict, source: str = "params.yaml") -> str:
    """docs/configuration.md: every key with its allowed values, its default, its value in `source`
    and its meaning."""
    lines = ["# Configuration", "",
             "Every params key, generated from the schema (`src/lwpar/config/params.schema.yaml`) by",
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


