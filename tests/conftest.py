"""Fixtures the tests share."""

from pathlib import Path

import pytest

from nanogpt_lib.data import load_text, prepare_char_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A prepared character dataset of the first 100,000 characters of tiny Shakespeare, once per module."""
    folder = tmp_path_factory.mktemp("data") / "tiny_shakespeare"
    prepare_char_dataset(load_text()[:100_000], folder)
    return folder
