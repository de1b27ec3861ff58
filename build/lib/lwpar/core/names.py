"""An artifact's quantized forms and their names: `<name>+int8` (every quantizable node in INT8,
`experiment.int8`) and `<name>+mixed` (INT8 with the places of worst measured error left in FP32,
`quantize.keep_float`, `experiment.mixed`)."""

from __future__ import annotations

QUANTIZED_FORMS = ("int8", "mixed")


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
