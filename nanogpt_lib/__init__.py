"""nanogpt_lib: the library exported from the chapters of *Build nanoGPT*.

Hand-written (the exporter knows it): the version and a few short re-exports. Every other
module except `cli.py` is generated from a chapter; edit the chapter, not the module.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "pick_device", "pick_precision", "set_seed"]
_DEVICE_NAMES = ("pick_device", "pick_precision", "set_seed")


def __getattr__(name: str):
    """The re-exports of `nanogpt_lib.device`, imported on first use: it imports PyTorch, and importing
    `nanogpt_lib` alone must not (`nanogpt sample --onnx` runs without it)."""
    if name in _DEVICE_NAMES:
        from nanogpt_lib import device

        return getattr(device, name)
    raise AttributeError(f"module 'nanogpt_lib' has no attribute {name!r}")
