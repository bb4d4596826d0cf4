"""Quiet Hugging Face loads: transformers' progress bars ("Loading weights", "Writing model
shards"), its load reports and config warnings, and the Python warnings transformers and torch
raise while a model is loaded, wrapped or exported, kept off the user's terminal.

:func:`quiet_hf` lowers transformers' verbosity to errors and turns its progress bars off for
the block, with warnings from the ``transformers`` and ``torch`` packages ignored in a scoped
filter (:func:`warnings.catch_warnings`); the user's own settings come back afterwards. Used
only where a Hugging Face model is handled (it imports transformers).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_hf() -> Iterator[None]:
    """The block runs with transformers quiet (see the module docstring)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"(transformers|torch)(\.|$)")
        try:
            import transformers.utils.logging as hl
        except ImportError:  # no transformers: nothing of it to quiet
            yield
            return
        level, bars = hl.get_verbosity(), hl.is_progress_bar_enabled()
        hl.set_verbosity_error()
        hl.disable_progress_bar()
        try:
            yield
        finally:
            hl.set_verbosity(level)
            if bars:
                hl.enable_progress_bar()
