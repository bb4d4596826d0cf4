"""A status line on stderr over a wait (compiling, exporting, building an image).

``with status("compiling gpt2-small", enabled):`` shows ``pimsim: compiling gpt2-small ... 3.1 s``
while the block runs (updated every quarter second on a terminal) and the time it took at the
end. It is shown only when ``enabled`` is true; :func:`wanted` gives the usual rule: on when
stderr is a terminal or ``--progress`` was given, off with ``--no-progress``. A block that ends
within :data:`QUIET_S` prints nothing at all.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

QUIET_S = 1.0  # waits shorter than this show nothing
TICK_S = 0.25


def wanted(progress: bool = False, no_progress: bool = False) -> bool:
    """On with ``--progress``, off with ``--no-progress``, else when stderr is a terminal."""
    if no_progress:
        return False
    return bool(progress) or sys.stderr.isatty()


@contextmanager
def status(what: str, enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    tty = sys.stderr.isatty()
    t0 = time.perf_counter()
    stop = threading.Event()
    shown = [False]

    def draw(final: str = "") -> None:
        dt = time.perf_counter() - t0
        text = f"pimsim: {what} ... {dt:.1f} s{final}"
        if tty:
            sys.stderr.write("\r" + text + ("\n" if final else ""))
        elif final:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()
        shown[0] = True

    def ticker() -> None:
        if stop.wait(QUIET_S):
            return
        if not tty:
            sys.stderr.write(f"pimsim: {what} ...\n")
            sys.stderr.flush()
            shown[0] = True
            return
        while not stop.wait(TICK_S):
            draw()

    th = threading.Thread(target=ticker, daemon=True, name="pimsim-status")
    th.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        stop.set()
        th.join()
        if shown[0] or time.perf_counter() - t0 >= QUIET_S:
            if tty:
                draw(", done" if ok else ", failed")
            elif shown[0]:
                sys.stderr.write(f"pimsim: {what}: {'done' if ok else 'failed'} in "
                                 f"{time.perf_counter() - t0:.1f} s\n")
                sys.stderr.flush()
