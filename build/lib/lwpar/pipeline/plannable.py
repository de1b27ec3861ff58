"""The planner's shape checks (`compress.feasibility`), remembered: building the networks, counting
their MACs and running a forward pass take seconds to tens of seconds, and Snakemake plans on every
invocation. The verdict is a function of the models' configuration, the decomposition recipes and
the code that builds and factorizes networks, so it is kept under a hash of exactly those, in the
user's cache folder (`LWPAR_CACHE`, else `$XDG_CACHE_HOME/lwpar`, else `~/.cache/lwpar`); a cache that
cannot be written is only slower."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from lwpar.core.errors import LwparError
from lwpar.pipeline.code import ROOT

CACHE_ENV = "LWPAR_CACHE"
# the code a verdict depends on: how networks are built and factorized, and how MACs are counted
CODE = ("models", "compress", "evaluation/complexity.py")


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lwpar"


def verdict_key(params: dict) -> str:
    digest = hashlib.sha256()
    experiment = params["experiment"]
    digest.update(json.dumps({"models": {m: params["models"][m] for m in experiment["models"]},
                              "variants": {v: params["variants"][v]["decompose"] for v in experiment["variants"]
                                           if "decompose" in params["variants"][v] and params["variants"][v]["base"] is None}},
                             sort_keys=True, default=str).encode())
    for top in CODE:
        paths = [ROOT / top] if (ROOT / top).is_file() else sorted((ROOT / top).rglob("*.py"))
        for path in paths:
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:32]


def check_plannable(params: dict) -> None:
    """`compress.feasibility.check_decompositions`, or its remembered verdict; raises LwparError."""
    path = cache_dir() / f"plannable-{verdict_key(params)}.json"
    try:
        verdict = json.loads(path.read_text())
    except (OSError, ValueError):
        verdict = None
    if verdict is None:
        from lwpar.compress.feasibility import check_decompositions

        try:
            check_decompositions(params)
            verdict = {"error": None}
        except LwparError as error:
            verdict = {"error": str(error)}
        try:
            from lwpar.core.io import write_json

            write_json(path, verdict)
        except LwparError:
            pass
    if verdict.get("error"):
        raise LwparError(verdict["error"])
