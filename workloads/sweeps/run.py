"""Running a sweep: every point a full simulation (compile + timed token generation) on
local worker processes, in this process, or on a Dask cluster, each result committed to the
SQLite store (:mod:`workloads.sweeps.store`) as it arrives."""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pimsim import __version__
from pimsim.config import config_from_dict
from pimsim.errors import UserError
from workloads.sweeps.analysis import SweepResult, pareto_fronts, scaling_table
from workloads.sweeps.spec import Point, PointError, Spec, load_spec
from workloads.sweeps.store import Store, canonical_json, rows_for_keys, to_dataframe

CONNECT_TIMEOUT_S = 10.0  # default bound on reaching a Dask scheduler

# ---------------------------------------------------------------- worker side

def _invalid_types() -> tuple:
    """What makes a point invalid (recorded with the reason, never retried): bad input of any
    kind (the UserError family: a bad value, a model that cannot be read or is not a decoder)
    and a model that does not fit or cannot be mapped. A model that cannot be resolved (a
    missing file, a module that cannot be imported) is recorded as an error instead: its point
    runs again on resume."""
    from pimsim.cli import user_error_types

    return user_error_types()


def _unresolved(e: BaseException) -> bool:
    from workloads.models.resolve import ModelNotResolved

    return isinstance(e, ModelNotResolved)


def run_point(task: dict) -> dict:
    """Simulate one point (in a worker process, a Dask worker, or in-process). Never raises:
    returns ``status`` ok / invalid / error with the metrics or the reason."""
    import socket
    import traceback

    out: dict[str, Any] = {"key": task["key"], "version": __version__,
                           "worker": f"{socket.gethostname()}:{os.getpid()}"}
    t0 = time.perf_counter()
    try:
        invalid = _invalid_types()
        cfg = config_from_dict(task["hw"], source=f"sweep point {task['key'][:8]}")
        cfg = dataclasses.replace(cfg, name=task.get("hw_name") or cfg.name)
        from workloads.compiling import compile_model

        t_compile = time.perf_counter()
        c = compile_model(task["model"], cfg, memo=True)  # once per model and geometry here
        progs, spec, compile_s = c.programs, c.spec, time.perf_counter() - t_compile
        prompt, tokens = task["prompt"], task["tokens"]
        if prompt + tokens - 1 > spec.n_ctx:
            raise PointError(f"prompt {prompt} + tokens {tokens} need {prompt + tokens - 1} "
                             f"decode steps, more than {task['model']}'s context of "
                             f"{spec.n_ctx}")
        from pimsim.pipeline import run_system

        t1 = time.perf_counter()
        batch = task.get("batch", 1)
        rep = run_system(progs, cfg, prompt=[0] * prompt, n_tokens=tokens,
                         schedule=task["schedule"], skip_prompt=task["skip_prompt"],
                         batch_prompts=[[0] * prompt] * batch if batch > 1 else None)
        e = rep.energy or {}
        out.update(
            status="ok", reason=None, ms_per_token=rep.ms_per_token,
            tokens_per_s=rep.throughput_tokens_per_s,
            mj_per_token=e.get("mj_per_token"), row_hit_rate=rep.row_hit_rate,
            cycles=rep.cycles, ms_total=rep.ms_total, breakdown=rep.breakdown,
            per_op=rep.per_op, commands=rep.commands,
            energy={k: v * 1e3 for k, v in e.get("by_component", {}).items()},
            compile_s=compile_s, sim_s=time.perf_counter() - t1)
    except Exception as e:  # noqa: BLE001 - every outcome is recorded, none crashes the sweep
        try:
            is_invalid = isinstance(e, invalid)
        except NameError:
            is_invalid = False
        if is_invalid and not _unresolved(e):
            out.update(status="invalid", reason=f"{type(e).__name__}: {e}")
        elif is_invalid:  # a missing file or module: not final, tried again on resume
            out.update(status="error", reason=f"{type(e).__name__}: {e} (tried again on resume)")
        else:
            tb = traceback.format_exc().strip().splitlines()
            out.update(status="error", reason="\n".join(tb[-6:]))
        out["sim_s"] = time.perf_counter() - t0
    return out


def _init_worker(parent_pid: int, threads: int) -> None:
    """Local worker process: few threads each (the workers share the cores), ignore Ctrl-C
    (the driver handles it), and exit if the driver dies (a killed sweep leaves no orphans)."""
    import signal

    for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[v] = str(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watchdog():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watchdog, daemon=True, name="pimsim-sweep-watchdog").start()


# ---------------------------------------------------------------- driver

def _row(p: Point, res: dict) -> dict:
    row = dict(res)
    row.update(model=p.model, prompt=p.prompt, tokens=p.tokens, schedule=p.schedule,
               skip_prompt=p.skip_prompt, batch=p.batch, hw_name=p.hw_name, hw=p.hw, params=p.params,
               version=__version__)
    if res.get("version") not in (None, __version__) and res.get("status") == "ok":
        row.update(status="error", reason=f"the worker runs pimsim {res['version']}, this "
                                          f"sweep {__version__}: results would not match the key")
    return row


def _sort_key(p: Point):
    hw = p.hw if p.error is None else {}
    return (p.model, canonical_json(hw.get("organization", {})), canonical_json(hw.get("pim", {})),
            p.idx)


def run_sweep(spec: Spec | str | Path, db: str | Path, *, workers: int | None = None,
              cluster: str | None = None, progress: bool | None = None,
              log: Callable[[str], None] | None = None,
              connect_timeout_s: float = CONNECT_TIMEOUT_S) -> SweepResult:
    """Run every point of ``spec`` not already finished in ``db``.

    ``workers``: local worker processes (default: the CPU count; 0 runs the points in this
    process). ``cluster``: a Dask scheduler address (``tcp://host:8786``), or ``local`` /
    ``local:N`` for a LocalCluster of N worker processes started here; ``workers`` is then
    ignored; ``connect_timeout_s`` bounds reaching it. ``progress``: tqdm bar on stderr
    (default: when stderr is a terminal).
    """
    log = log or (lambda s: print(s, file=sys.stderr))
    if _importing_main_in_a_worker():
        raise UserError(GUARD_PROBLEM + ": this process is a spawned worker importing the main "
                        "script, and the script starts the sweep again", GUARD_FIX)
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    if cluster:
        parse_cluster(cluster)  # a malformed address fails before anything is written
    t_start = time.perf_counter()
    store = Store(db)
    try:
        store.register_sweep(spec.name, {"path": spec.path, "spec": spec.raw},
                             [(p.idx, p.key, p.params) for p in spec.points])
        by_key: dict[str, Point] = {}
        for p in spec.points:
            by_key.setdefault(p.key, p)
        done = store.finished(by_key)
        todo = [p for k, p in by_key.items() if k not in done]
        pre_invalid = [p for p in todo if p.error is not None]
        tasks = sorted((p for p in todo if p.error is None), key=_sort_key)
        connection = dask_client(cluster, connect_timeout_s) if cluster and tasks else None
        script = None if cluster or not tasks or _n_workers(workers) == 0 else unguarded_script()
        if script is not None:
            log(f"sweep {spec.name}: called from the top level of {script} outside "
                f"'if __name__ == \"__main__\":', where spawned worker processes would run the "
                f"script again: running the points in this process (put the call under that "
                f"guard to use worker processes)")
            workers = 0
        log(f"sweep {spec.name}: {len(spec.points)} points ({len(by_key)} distinct), "
            f"{len(done)} already in {db}, {len(todo)} to run"
            + ("" if not tasks else f" on Dask at {cluster}" if cluster
               else " in this process" if _n_workers(workers) == 0
               else f" on {_n_workers(workers)} local worker process(es)"))
        for p in pre_invalid:
            store.write(_row(p, {"key": p.key, "status": "invalid", "reason": p.error}))
        interrupted = False
        finished: list[str] = [p.key for p in pre_invalid]
        if tasks:
            bar = _bar(len(tasks), spec.name, progress)
            counts = {"ok": 0, "invalid": 0, "error": 0}

            def on_result(p: Point, res: dict) -> None:
                row = _row(p, res)
                store.write(row)  # committed now: survives a kill of the sweep
                counts[row["status"]] += 1
                finished.append(p.key)
                if bar is not None:
                    bar.set_postfix(counts, refresh=False)
                    bar.update(1)

            try:
                if cluster:
                    _run_dask(tasks, connection, on_result)
                elif _n_workers(workers) == 0:
                    for p in tasks:
                        on_result(p, run_point(p.task()))
                else:
                    _run_local(tasks, _n_workers(workers), on_result)
            except KeyboardInterrupt:
                interrupted = True
            finally:
                if bar is not None:
                    bar.close()
        res = SweepResult(spec=spec, db=str(db), n_points=len(spec.points),
                          n_unique=len(by_key), n_skipped=len(done),
                          n_run=len(finished), wall_s=time.perf_counter() - t_start,
                          interrupted=interrupted)
        res.df = to_dataframe(store, spec.name)
    finally:
        store.close()
    res.scaling = scaling_table(res.df, spec.swept)
    res.pareto = pareto_fronts(res.df)
    return res


GUARD_PROBLEM = ("a sweep on local worker processes was started from the top level of a script "
                 "outside 'if __name__ == \"__main__\":'")
GUARD_FIX = ("put the sweep call under 'if __name__ == \"__main__\":' (spawned worker processes "
             "import the script again), or run the points in this process (workers=0, "
             "--workers 0)")


def _importing_main_in_a_worker() -> bool:
    """Whether this process is a spawned worker still importing the parent's main script (the
    multiprocessing bootstrap): a sweep started there is the script's unguarded top level run
    again, and would start workers of its own or rerun every point."""
    import multiprocessing

    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def unguarded_script() -> str | None:
    """The path of the script this call comes from when it comes from the script's top level
    outside an ``if __name__ == "__main__":`` block, else None. Local worker processes are
    spawned: each imports the main script again, and a call at its unguarded top level would
    run the sweep again in every worker (the workers then fail and every point would be an
    error)."""
    import ast

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None:  # an interactive session: workers import nothing of it
        return None
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_globals is vars(main)
                                     and frame.f_code.co_name == "<module>"):
        frame = frame.f_back
    if frame is None:  # not called from the main script's top level (a test runner, a CLI)
        return None
    try:
        tree = ast.parse(Path(path).read_text(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return None
    line = frame.f_lineno
    for node in tree.body:
        if node.lineno <= line <= (node.end_lineno or node.lineno):
            return None if _is_main_guard(node) else str(path)
    return str(path)


def _is_main_guard(node) -> bool:
    import ast

    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    sides = [node.test.left, *node.test.comparators]
    names = {s.id for s in sides if isinstance(s, ast.Name)}
    consts = {s.value for s in sides if isinstance(s, ast.Constant)}
    return names == {"__name__"} and consts == {"__main__"}


def _n_workers(workers: int | None) -> int:
    if workers is None:
        return os.cpu_count() or 1
    return max(0, int(workers))


def _bar(total: int, name: str, progress: bool | None):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="pt", desc=f"sweep {name}", file=sys.stderr)


def _run_local(tasks: list[Point], n: int, on_result) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    pending = list(tasks)
    threads = max(1, (os.cpu_count() or 1) // n)
    returned = 0  # points a worker sent back
    for _attempt in range(3):  # a worker that dies (e.g. out of memory) breaks the pool
        ex = ProcessPoolExecutor(max_workers=min(n, len(pending)),
                                 mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=(os.getpid(), threads))
        futs = {ex.submit(run_point, p.task()): p for p in pending}
        broken: list[Point] = []
        try:
            for f in as_completed(futs):
                p = futs[f]
                try:
                    res = f.result()
                except BrokenProcessPool:
                    broken.append(p)
                    continue
                returned += 1
                on_result(p, res)
        except KeyboardInterrupt:
            # stop our own workers (by their process objects); the pool then fails the
            # futures still pending, which nobody waits for any more
            for proc in list((getattr(ex, "_processes", None) or {}).values()):
                proc.terminate()
            ex.shutdown(wait=False)
            raise
        ex.shutdown(wait=True)
        pending = broken
        if not pending:
            return
    if not returned:  # no worker ever finished a point: none could start, nothing to store
        main = getattr(sys.modules.get("__main__"), "__file__", None)
        raise UserError(f"every local worker process died before finishing a point (3 pools of "
                        f"{min(n, len(tasks))}); the usual cause: " + GUARD_PROBLEM
                        + (f" ({main})" if main else "") + ", or a main script the workers "
                        "cannot import", GUARD_FIX)
    for p in pending:
        on_result(p, {"key": p.key, "status": "error",
                      "reason": "a worker process died while running this point "
                                "(BrokenProcessPool, 3 attempts)"})


def parse_cluster(address: str) -> tuple[str, int | None]:
    """("local", N) for ``local`` / ``local:N``, else (address, None) for a scheduler address
    (``tcp://host:port``, ``host:port``, ``tls://...``). UserError for a malformed one."""
    fix = "give local, local:N (N >= 1 worker processes) or a scheduler address tcp://HOST:PORT"
    a = address.strip()
    if a == "local":
        return "local", os.cpu_count() or 1
    if a.startswith("local:"):
        n = a.split(":", 1)[1]
        if not n.isdigit() or not 1 <= int(n) <= 1024:
            raise UserError(f"--cluster {address!r}: {n!r} is not a worker count in 1..1024", fix)
        return "local", int(n)
    m = re.fullmatch(r"(?:(tcp|tls|inproc|ucx|ws|wss)://)?"
                     r"([^\s/:]+|\[[0-9a-fA-F:]+\])(?::(\d+))?/?", a)
    if not m or (m.group(1) in (None, "tcp", "tls") and m.group(3) is None):
        raise UserError(f"--cluster {address!r} is not a Dask scheduler address", fix)
    if m.group(3) is not None and not 0 < int(m.group(3)) < 65536:
        raise UserError(f"--cluster {address!r}: port {m.group(3)} is out of range 1..65535", fix)
    return a if m.group(1) else f"tcp://{a}", None


def dask_client(address: str, connect_timeout_s: float = CONNECT_TIMEOUT_S):
    """(client, local cluster or None) for ``--cluster ADDRESS``; a UserError, within
    ``connect_timeout_s``, when the scheduler cannot be reached."""
    from dask.distributed import Client, LocalCluster

    where, n = parse_cluster(address)
    cluster = None
    if where == "local":
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None)
        where = cluster.scheduler_address
    try:
        return Client(where, timeout=connect_timeout_s), cluster
    except (OSError, TimeoutError) as e:
        if cluster is not None:
            cluster.close()
        raise UserError(f"cannot reach the Dask scheduler at {address!r} within "
                        f"{connect_timeout_s:g} s ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]})",
                        "check the address and that the scheduler is running, or drop --cluster "
                        "to run on local processes") from None


def _run_dask(tasks: list[Point], connection, on_result) -> None:
    """Run the tasks on a Dask cluster (``connection`` from :func:`dask_client`). Dask ships
    the tasks and results with pickle: use only a cluster you trust (its workers run whatever
    the driver sends, and the driver unpickles what they return)."""
    from dask.distributed import as_completed

    client, cluster = connection
    try:
        futs = {}
        for p in tasks:
            f = client.submit(run_point, p.task(), key=f"pimsim-point-{p.key}", pure=False)
            futs[f] = p
        try:
            for f in as_completed(list(futs)):
                p = futs[f]
                try:
                    res = f.result()
                except Exception as e:  # noqa: BLE001 - a lost worker, a serialisation error
                    res = {"key": p.key, "status": "error",
                           "reason": f"dask: {type(e).__name__}: {e}"}
                on_result(p, res)
                f.release()
        except KeyboardInterrupt:
            client.cancel(list(futs))
            raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()



def stored_result(spec: Spec, db: str | Path) -> SweepResult:
    """What ``db`` holds for ``spec``'s points, without running anything (the store is opened
    read-only: it may sit on a read-only medium)."""

    df = rows_for_keys(db, [(p.idx, p.key, p.params) for p in spec.points])
    res = SweepResult(spec=spec, db=str(db), n_points=len(spec.points),
                      n_unique=len({p.key for p in spec.points}),
                      n_skipped=int(df["status"].notna().sum()) if len(df) else 0, n_run=0,
                      wall_s=0.0, df=df)
    res.scaling = scaling_table(res.df, spec.swept)
    res.pareto = pareto_fronts(res.df)
    return res

