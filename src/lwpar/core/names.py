"""An artifact's quantized forms and their names: `<name>+int8` (every quantizable node in INT8, by
`quantize.engine`; `experiment.int8`), `<name>+mixed` (the same with the places of worst measured
error left in FP32, `quantize.keep_float`; `experiment.mixed`) and `<name>+nncf` (NNCF's
post-training INT8 on the same images and ops, beside ONNX Runtime's; `experiment.nncf`)."""

from __future__ import annotations

QUANTIZED_FORMS = ("int8", "mixed", "nncf")
NNCF_QUANTIZE_KEYS = ("calibration_images", "op_types")  # NNCF's own defaults otherwise


def form_keys(form: str, quantize_keys) -> list[str]:
    """The `quantize` keys a quantized form reads, of `quantize_keys` (every key of the block): full
    INT8 all but keep_float (changing it re-quantizes only the mixed forms), mixed all, NNCF's its
    images and ops."""
    if form == "nncf":
        return list(NNCF_QUANTIZE_KEYS)
    return [key for key in quantize_keys if form == "mixed" or key != "keep_float"]


def quantized_form(name: str) -> str | None:
    """The quantized form an artifact name ends with (`int8`, `mixed`), None for an FP32 artifact."""
    _, plus, form = name.rpartition("+")
    return form if plus and form in QUANTIZED_FORMS else None


def fp32_name(name: str) -> str:
    """The FP32 artifact a name is a quantized form of (the name itself for an FP32 artifact)."""
    form = quantized_form(name)
    return name[: -len(form) - 1] if form else name


def form_suffix(name: str) -> str:
    """`+int8`, `+mixed` or the empty string."""
    form = quantized_form(name)
    return f"+{form}" if form else ""
