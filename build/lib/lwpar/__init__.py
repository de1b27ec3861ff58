"""lwpar: lightweight pedestrian attribute recognition, as one reproducible pipeline."""

from lwpar.core.errors import LwparError

__version__ = "0.1.0"
__all__ = ["LwparError", "Predictor", "__version__"]


def __getattr__(name: str):
    # `from lwpar import Predictor` without importing ONNX Runtime for every other use of the package
    # (imported by name: no pipeline job runs it through here, so it is no code input of every job)
    if name == "Predictor":
        import importlib

        return importlib.import_module("lwpar.deploy.predict").Predictor
    raise AttributeError(f"module 'lwpar' has no attribute {name!r}")
