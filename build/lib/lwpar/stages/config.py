"""Print the merged, validated configuration of a params file (or --reference: every key).

What every stage of a run reads: the file merged onto the files it extends and completed from the
schema's defaults, written out as a standalone params file; `--reference` prints
docs/configuration.md, `--sources` the files of the extends chain.
"""

from __future__ import annotations

from lwpar.stages import flag

FLAGS = [
    flag("--reference", "print docs/configuration.md (every key, its default and meaning) instead", action="store_true"),
    flag("--sources", "print the files of the extends chain, base first, instead", action="store_true"),
]


def run(args, params) -> None:
    import os

    import yaml

    from lwpar.config import layers
    from lwpar.config.reference import reference_markdown

    class WrittenOut(yaml.SafeDumper):
        """Writes every value where it applies, without anchors and aliases for values overlays share."""

        def ignore_aliases(self, data) -> bool:
            return True

    if args.reference:
        print(reference_markdown(params, args.params), end="")
    elif args.sources:
        print("\n".join(os.path.normpath(path) for path, _ in layers(args.params)))
    else:
        print(f"# {args.params}, merged onto the files it extends and completed from the schema's defaults")
        print(yaml.dump(params, Dumper=WrittenOut, sort_keys=False, width=120, default_flow_style=None), end="")
