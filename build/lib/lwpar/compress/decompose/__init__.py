"""Low-rank decomposition: CP-ALS (tensorly), CPD-EPC (ours), Tucker-2 (tensorly), truncated SVD,
the factorized layers built from them, and rank selection.

Public entry points for tensors: `cp_als`, `cpd_epc` (3-way tensor in, tensorly CPTensor out).
"""

from lwpar.compress.decompose._cp import cp_als, cpd_epc, relative_error, sum_of_squared_norms, sensitivity

__all__ = ["cp_als", "cpd_epc", "relative_error", "sum_of_squared_norms", "sensitivity"]
