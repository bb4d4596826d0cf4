"""One error path for bad input.

Every layer (config loader, trace parser, compiler front end, sweep, command line) raises a
:class:`UserError` (or a subclass) when the *input* is wrong: a file that cannot be read, a value
out of range, a model the compiler cannot use. The message names the problem and the fix,
``"<problem>; <fix>"``; the command line prints it as one line, ``pimsim: error: <message>``, and
exits with status 2. Anything else is a bug in pimsim: the command line prints one line naming the
exception and exits 2 as well; ``--debug`` shows the traceback.

:func:`read_text` / :func:`read_bytes` are the one way files given on the command line are read:
a missing file, a directory, a permission problem or undecodable bytes become a
:class:`UserError` naming the file. Output files are :mod:`pimsim.outputs`' part: one check of
all the paths of an invocation before the long work starts, and atomic writes.
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_MESSAGE_CHARS = 600  # a message is one line of at most this many characters


class UserError(ValueError):
    """Bad input from the user. ``str(e)`` is ``"<problem>; <fix>"``.

    ``UserError(problem, fix)`` joins the two; a subclass may set ``default_fix``, used when the
    message carries no fix of its own (no ``"; "`` in it).
    """

    default_fix: str | None = None

    def __init__(self, problem: str, fix: str | None = None) -> None:
        super().__init__(f"{problem}; {fix}" if fix else problem)


class ConfigError(UserError):
    """A hardware config is malformed; the message names the file, the key and the fix."""

    default_fix = ("correct that value in the config (docs/guide.md's Hardware configs section "
                   "lists them)")


class HardwareFitError(ValueError):
    """A model does not fit the hardware's memory or cannot be placed on it (the compiler's
    capacity and mapping errors derive from it). Bad input like a :class:`UserError`: the
    command line prints its message as one line and exits with status 2."""


class ModelFileError(UserError):
    """A model file (ONNX) that cannot be read or is not a decode step."""

    default_fix = "export the decode step with workloads.models.export.export_decode_onnx"


def _clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


def one_line(msg: str) -> str:
    """``msg`` on one line (whitespace runs collapsed), clipped to MAX_MESSAGE_CHARS."""
    return _clip(" ".join(str(msg).split()))


def format_user_error(e: BaseException) -> str:
    """The one line the command line prints for a UserError (without the ``pimsim: error:``)."""
    msg = one_line(str(e)) or type(e).__name__
    fix = getattr(type(e), "default_fix", None)
    if fix and "; " not in msg:
        msg = f"{msg}; {fix}"
    return msg


def format_unexpected(e: BaseException) -> str:
    """The one line for an exception that is not a UserError (a pimsim bug)."""
    detail = one_line(str(e))
    return (f"internal error {type(e).__name__}" + (f": {detail}" if detail else "")
            + "; this is a bug in pimsim: re-run with --debug to see the traceback and report it")


def _name(path: str | os.PathLike, what: str) -> str:
    return f"{what} {os.fspath(path)!r}"


def read_bytes(path: str | os.PathLike, what: str = "file") -> bytes:
    """The bytes of ``path``; a UserError naming ``what`` and the file if it cannot be read."""
    p = Path(path)
    try:
        if p.is_dir():
            raise UserError(f"{_name(path, what)} is a directory", "give the path of a file")
        return p.read_bytes()
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"{_name(path, what)} not found", "check the path") from None
    except PermissionError:
        raise UserError(f"{_name(path, what)} cannot be read (permission denied)",
                        "check the file's permissions") from None
    except OSError as e:
        raise UserError(f"{_name(path, what)} cannot be read ({e.strerror or e})",
                        "check the path and the medium") from None


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The UTF-8 text of ``path``; a UserError naming the file if it cannot be read or decoded."""
    data = read_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{_name(path, what)} is not UTF-8 text (byte {e.start}: "
                        f"{data[e.start:e.start + 1]!r})",
                        "give a text file (is it a binary file or another encoding?)") from None
