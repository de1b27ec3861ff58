"""The configuration: a params file, its `extends` chain merged, every key it leaves out filled from
the schema's defaults (`params.schema.yaml`), the keys a variant's method or policy does not read
dropped (or refused where the file sets them), validated with one-line errors naming the file and
the key. Imports no torch: Snakemake plans with it.
"""

from lwpar.config.load import (MIRROR_ENV, WEIGHTS_ENV, ParamsError, layers, load_params, merge, mirror_dir, resolve,
                               schema, validate_params, weights_dir)

__all__ = ["MIRROR_ENV", "WEIGHTS_ENV", "ParamsError", "layers", "load_params", "merge", "mirror_dir", "resolve",
           "schema", "validate_params", "weights_dir"]
