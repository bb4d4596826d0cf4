"""Request streams for the serving simulation: who arrives when, with how many prompt tokens,
asking for how many output tokens.

Two sources, both deterministic:

* a JSONL file (:func:`load_jsonl`), one request per line::

      {"arrival_s": 0.0, "prompt_len": 12, "output_len": 20}
      {"arrival_s": 0.35, "prompt_len": 5, "output_len": 8, "prompt_token_ids": [1, 2, 3, 4, 5]}

  ``arrival_s`` (seconds from the start of the stream, >= 0), ``prompt_len`` and ``output_len``
  (whole numbers >= 1) are required; ``prompt_token_ids`` is optional (its length must be
  ``prompt_len``; timing does not depend on the ids). Every line is checked: a bad one raises a
  :class:`~pimsim.errors.UserError` naming the file, the line and the field.
* synthetic (:func:`synthetic`), as vLLM's ``benchmark_serving``: ``num_prompts`` requests
  arriving at ``request_rate`` per second (``inf``: all at t = 0; else a Poisson process,
  exponential gaps drawn from a seeded ``numpy.random.Generator``), with fixed lengths
  (``input_len`` / ``output_len``) or lengths drawn from a ShareGPT-like distribution
  (:data:`SHAREGPT`).

The ShareGPT-like distribution is a lognormal per length, parametrised by its mean and the sigma
of the underlying normal. The means are the ShareGPT figures reported in the vLLM paper (Kwon et
al., "Efficient Memory Management for Large Language Model Serving with PagedAttention", SOSP
2023, Fig. 11: mean input 161.31 tokens, mean output 337.99 tokens); the sigmas are [assumed]
(1.0 for inputs, 0.8 for outputs: a long right tail, most prompts short), not fitted to the data
set. Nothing is downloaded. As vLLM's benchmark filters ShareGPT, draws that cannot be served
(``prompt_len + output_len - 1`` above ``max_total_len``, the model's context) are drawn again.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pimsim.errors import UserError, read_text

REQUIRED = ("arrival_s", "prompt_len", "output_len")
OPTIONAL = ("prompt_token_ids",)
LENGTH_DISTS = ("fixed", "sharegpt")


@dataclass(frozen=True)
class LogNormalLength:
    """A token length drawn from a lognormal of mean ``mean`` (tokens) and underlying-normal
    sigma ``sigma``, rounded to a whole number >= 1."""

    mean: float
    sigma: float

    @property
    def mu(self) -> float:
        return math.log(self.mean) - self.sigma ** 2 / 2  # E[X] = exp(mu + sigma^2 / 2)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.maximum(1, np.rint(rng.lognormal(self.mu, self.sigma, n))).astype(np.int64)


# mean input / output tokens: vLLM paper (SOSP 2023) Fig. 11; sigmas [assumed]
SHAREGPT = {"input": LogNormalLength(161.31, 1.0), "output": LogNormalLength(337.99, 0.8)}
MAX_REDRAWS = 1000  # rounds of redrawing lengths that do not fit before giving up


@dataclass(frozen=True)
class Request:
    """One request: arrives at ``arrival_s`` (seconds), has ``prompt_len`` prompt tokens and
    wants ``output_len`` output tokens."""

    id: int
    arrival_s: float
    prompt_len: int
    output_len: int
    prompt_token_ids: tuple[int, ...] | None = None

    @property
    def kv_tokens_needed(self) -> int:
        """KV-cache slots the request holds at its end: every prompt token and every output
        token but the last (which is sampled, never fed back)."""
        return self.prompt_len + self.output_len - 1

    def to_dict(self) -> dict:
        d = {"arrival_s": self.arrival_s, "prompt_len": self.prompt_len,
             "output_len": self.output_len}
        if self.prompt_token_ids is not None:
            d["prompt_token_ids"] = list(self.prompt_token_ids)
        return d


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_request(obj, where: str, rid: int) -> Request:
    """A :class:`Request` from one decoded JSON line; ``where`` names the line in errors."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(obj).__name__}",
                        'write one object per line: {"arrival_s": 0.0, "prompt_len": 16, '
                        '"output_len": 32}')
    unknown = sorted(set(obj) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise UserError(f"{where}: unknown field {unknown[0]!r}",
                        f"use only {', '.join(REQUIRED + OPTIONAL)}")
    ids = obj.get("prompt_token_ids")
    for k in REQUIRED:
        if k not in obj:
            raise UserError(f"{where}: field {k!r} is missing",
                            f"give {', '.join(REQUIRED)} on every line")
    a = obj["arrival_s"]
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or a < 0:
        raise UserError(f"{where}: field 'arrival_s' = {a!r} is not a finite number >= 0",
                        "give the arrival time in seconds from the start of the stream")
    for k in ("prompt_len", "output_len"):
        v = obj[k]
        if not _whole(v) or v < 1:
            raise UserError(f"{where}: field {k!r} = {v!r} is not a whole number >= 1",
                            f"give {k} as a positive integer (tokens)")
    if ids is not None:
        if not isinstance(ids, list) or not all(_whole(t) and t >= 0 for t in ids):
            raise UserError(f"{where}: field 'prompt_token_ids' is not a list of token ids "
                            f"(whole numbers >= 0)", "give a list of integers or leave it out")
        if len(ids) != obj["prompt_len"]:
            raise UserError(f"{where}: field 'prompt_token_ids' has {len(ids)} ids but "
                            f"prompt_len is {obj['prompt_len']}", "make them agree")
        ids = tuple(ids)
    return Request(rid, float(a), obj["prompt_len"], obj["output_len"], ids)


def load_jsonl(path: str | Path) -> list[Request]:
    """The requests of a JSONL file, in arrival order (ties keep the file's order)."""
    text = read_text(path, "request file (--requests)")
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"request file {str(path)!r} line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not valid JSON ({e.msg} at column {e.colno})",
                            "write one JSON object per line") from None
        out.append(parse_request(obj, where, len(out)))
    if not out:
        raise UserError(f"request file {str(path)!r} holds no requests",
                        "write one JSON object per line")
    return sort_by_arrival(out)


def sort_by_arrival(reqs: list[Request]) -> list[Request]:
    """Stable sort by arrival; ids renumbered 0.. in that order."""
    order = sorted(reqs, key=lambda r: r.arrival_s)
    return [Request(i, r.arrival_s, r.prompt_len, r.output_len, r.prompt_token_ids)
            for i, r in enumerate(order)]


def arrivals(n: int, request_rate: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` arrival times (s): all 0 for an infinite rate, else a Poisson process of
    ``request_rate`` per second starting at 0 (cumulative exponential gaps)."""
    if math.isinf(request_rate):
        return np.zeros(n)
    gaps = rng.exponential(1.0 / request_rate, n)
    gaps[0] = 0.0  # the first request opens the stream
    return np.cumsum(gaps)


def synthetic(num_prompts: int, *, request_rate: float = math.inf, input_len: int = 32,
              output_len: int = 32, length_dist: str = "fixed", seed: int = 0,
              max_total_len: int | None = None) -> list[Request]:
    """``num_prompts`` requests as described in the module docstring; the same arguments give
    the same stream."""
    if not _whole(num_prompts) or num_prompts < 1:
        raise UserError(f"num_prompts {num_prompts!r} is not a whole number >= 1",
                        "give at least one request")
    if isinstance(request_rate, bool) or not isinstance(request_rate, (int, float)) \
            or math.isnan(request_rate) or request_rate <= 0:
        raise UserError(f"request_rate {request_rate!r} is not a number > 0",
                        "give requests per second, or inf to send them all at t = 0")
    if length_dist not in LENGTH_DISTS:
        raise UserError(f"length distribution {length_dist!r} is not known",
                        f"use one of {', '.join(LENGTH_DISTS)}")
    rng = np.random.default_rng(seed)
    t = arrivals(num_prompts, float(request_rate), rng)
    if length_dist == "fixed":
        for k, v in (("input_len", input_len), ("output_len", output_len)):
            if not _whole(v) or v < 1:
                raise UserError(f"{k} {v!r} is not a whole number >= 1", f"give {k} in tokens")
        p = np.full(num_prompts, input_len, np.int64)
        o = np.full(num_prompts, output_len, np.int64)
    else:
        p, o = _sharegpt_lengths(num_prompts, rng, max_total_len)
    return [Request(i, float(t[i]), int(p[i]), int(o[i])) for i in range(num_prompts)]


def _sharegpt_lengths(n: int, rng: np.random.Generator,
                      max_total_len: int | None) -> tuple[np.ndarray, np.ndarray]:
    p = SHAREGPT["input"].draw(rng, n)
    o = SHAREGPT["output"].draw(rng, n)
    if max_total_len is None:
        return p, o
    if max_total_len < 1:
        raise UserError(f"max_total_len {max_total_len} leaves no room for a request",
                        "use a model with a context of at least one token")
    for _ in range(MAX_REDRAWS):
        bad = np.flatnonzero(p + o - 1 > max_total_len)
        if not len(bad):
            return p, o
        p[bad] = SHAREGPT["input"].draw(rng, len(bad))
        o[bad] = SHAREGPT["output"].draw(rng, len(bad))
    raise UserError(f"ShareGPT-like lengths rarely fit a context of {max_total_len} tokens "
                    f"(still {len(bad)} of {n} too long after {MAX_REDRAWS} redraws)",
                    "use fixed lengths (--input-len / --output-len) for a short-context model")
