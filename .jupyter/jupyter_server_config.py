"""The Jupyter server for reading the book: `JUPYTER_CONFIG_PATH=.jupyter jupyter lab` reads this file.

A chapter is a MyST-Markdown file, and Jupytext's contents manager reads it as a notebook. The file keeps no
`language_info` (it would record the Python version of whoever saved it last), so JupyterLab fills it in
from the kernel as soon as the notebook opens: a change to the notebook, which marks the tab unsaved before
the reader has touched anything. Here the contents manager hands JupyterLab each text notebook with the
`language_info` that its Python kernel will report, so opening a chapter changes nothing. Saving drops it
again (jupytext.toml keeps only the header the chapters have).
"""

import copy

from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
from jupytext.async_contentsmanager import build_async_jupytext_contents_manager_class

JupytextContentsManager = build_async_jupytext_contents_manager_class(AsyncLargeFileManager)


def kernel_language_info() -> dict | None:
    """What the `python3` kernel says about its language: the server's own Python runs that kernel."""
    try:
        from ipykernel.ipkernel import IPythonKernel
    except ImportError:
        return None
    return copy.deepcopy(IPythonKernel.language_info)


class BookContentsManager(JupytextContentsManager):
    """Jupytext's contents manager, handing out text notebooks with their Python kernel's `language_info`."""

    async def get(self, path, content=True, type=None, format=None, **kwargs):
        model = await super().get(path, content=content, type=type, format=format, **kwargs)
        notebook = model.get("content") if model.get("type") == "notebook" else None
        if notebook is None or path.endswith(".ipynb") or "language_info" in notebook["metadata"]:
            return model
        if notebook["metadata"].get("kernelspec", {}).get("language") == "python":
            info = kernel_language_info()
            if info is not None:
                notebook["metadata"]["language_info"] = info
        return model


c = get_config()  # noqa: F821 (defined by Jupyter when it reads this file)
c.ServerApp.contents_manager_class = BookContentsManager
