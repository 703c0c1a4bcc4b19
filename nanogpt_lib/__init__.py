"""nanogpt_lib: the library exported from the chapters of *Build nanoGPT*.

Hand-written (the exporter knows it): the version and a few short re-exports. Every other
module except `cli.py` is generated from a chapter; edit the chapter, not the module.
"""

__version__ = "0.1.0"

from nanogpt_lib.device import pick_device, pick_precision, set_seed  # noqa: E402

__all__ = ["__version__", "pick_device", "pick_precision", "set_seed"]
