"""lwpar: lightweight pedestrian attribute recognition, as one reproducible pipeline."""

__version__ = "0.1.0"


class LwparError(Exception):
    """An error meant for the user: printed as one line, without a traceback."""


def __getattr__(name: str):
    # `from lwpar import Predictor` without importing ONNX Runtime for every other use of the package
    if name == "Predictor":
        from lwpar.predict import Predictor

        return Predictor
    raise AttributeError(f"module 'lwpar' has no attribute {name!r}")
