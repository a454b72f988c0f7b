"""Benchmarks: `bench builds` runs each build's llama-bench, interleaved, on one model.

Interleaving (A B, B A, A B ...) spreads a noisy machine's drift over every build
alike, so the ratios compare like with like.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from nativellm import run
from nativellm.build.store import BuildRecord, Store
from nativellm.errors import NotFoundError, UsageError
from nativellm.models.registry import ModelRegistry
from nativellm.paths import Paths
from nativellm.serve.dropins import base_url
from nativellm.specs import load_spec

T = TypeVar("T")


@dataclass(frozen=True)
class Spread:
    """min / median / max of repeated measurements (tokens per second, or ratios of them)."""

    min: float
    median: float
    max: float
    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: Sequence[float]) -> Spread:
        if not samples:
            return cls(0.0, 0.0, 0.0, ())
        return cls(min(samples), statistics.median(samples), max(samples), tuple(samples))


@dataclass(frozen=True)
class BuildBench:
    build_id: str
    pp: Spread
    tg: Spread
    pp_ratio: Spread | None  # per-round ratios to the first build (same round), their min / median / max
    tg_ratio: Spread | None
    crashed: str | None = None  # "SIGILL", "exit 1", ... when llama-bench failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "build_id": self.build_id,
            "pp": {
                "min": self.pp.min,
                "median": self.pp.median,
                "max": self.pp.max,
                "samples": list(self.pp.samples),
            },
            "tg": {
                "min": self.tg.min,
                "median": self.tg.median,
                "max": self.tg.max,
                "samples": list(self.tg.samples),
            },
            "pp_ratio": self.pp_ratio.median if self.pp_ratio else None,
            "tg_ratio": self.tg_ratio.median if self.tg_ratio else None,
            "pp_ratio_spread": _spread_dict(self.pp_ratio),
            "tg_ratio_spread": _spread_dict(self.tg_ratio),
            "crashed": self.crashed,
        }


def _spread_dict(s: Spread | None) -> dict[str, float] | None:
    return {"min": s.min, "median": s.median, "max": s.max} if s else None


def paired_ratios(samples: Sequence[float], base: Sequence[float]) -> Spread | None:
    """Ratios of the same round's figures. A round's builds run back to back, so the machine's drift, which
    on a shared VM moves whole rounds by tens of percent, cancels in each ratio; the median of them is the
    estimate, and it is steadier than the ratio of the two medians, which pairs figures from other rounds."""
    ratios = [x / y for x, y in zip(samples, base, strict=False) if y > 0]
    return Spread.of(ratios) if ratios else None


def parse_llama_bench_json(text: str) -> tuple[float | None, float | None]:
    """(pp t/s, tg t/s) from `llama-bench -o json` output."""
    try:
        rows = json.loads(text)
    except json.JSONDecodeError:
        return None, None
    pp = tg = None
    for row in rows if isinstance(rows, list) else []:
        if row.get("n_prompt", 0) > 0 and row.get("n_gen", 0) == 0:
            pp = float(row["avg_ts"])
        elif row.get("n_gen", 0) > 0 and row.get("n_prompt", 0) == 0:
            tg = float(row["avg_ts"])
    return pp, tg


def round_order(items: Sequence[T], round_no: int) -> list[T]:
    """A B C, then C B A, then A B C ...: every build sits at every position equally often, so a
    position effect (the first run after a pause, a neighbour's periodic load) favours none."""
    return list(items) if round_no % 2 == 0 else list(reversed(items))


def bench_builds(
    records: Sequence[BuildRecord],
    model: Path,
    *,
    repetitions: int = 3,
    n_prompt: int = 256,
    n_gen: int = 64,
    threads: int | None = None,
    on_round: Callable[[int, str], None] | None = None,
) -> list[BuildBench]:
    """Run llama-bench of every build on `model`, interleaved over `repetitions` rounds."""
    if not records:
        raise UsageError("no builds to compare", "pass build ids, or build something first")
    if repetitions < 1:
        raise UsageError("--repetitions must be at least 1", "pass --repetitions 3")
    pp: dict[str, list[float]] = {r.id: [] for r in records}
    tg: dict[str, list[float]] = {r.id: [] for r in records}
    crashed: dict[str, str] = {}
    for round_no in range(repetitions):
        for rec in round_order(records, round_no):
            if rec.id in crashed:
                continue
            if on_round:
                on_round(round_no + 1, rec.id)
            argv = [str(rec.binary("llama-bench")), "-m", str(model), "-p", str(n_prompt), "-n", str(n_gen),
                    "-r", "1", "-o", "json"]  # fmt: skip
            if threads:
                argv += ["-t", str(threads)]
            res = run.run(argv, timeout=1800)
            p, t = parse_llama_bench_json(res.stdout) if res.ok else (None, None)
            if p is None or t is None:
                crashed[rec.id] = run.short_exit(res.returncode) if not res.ok else "no result"
                continue
            pp[rec.id].append(p)
            tg[rec.id].append(t)
    base = records[0].id
    out = []
    for rec in records:
        ok = rec.id not in crashed and base not in crashed
        out.append(
            BuildBench(
                rec.id,
                Spread.of(pp[rec.id]),
                Spread.of(tg[rec.id]),
                paired_ratios(pp[rec.id], pp[base]) if ok else None,
                paired_ratios(tg[rec.id], tg[base]) if ok else None,
                crashed.get(rec.id),
            )
        )
    return out


@dataclass(frozen=True)
class BuildsReport:
    """`bench builds`: every build's llama-bench figures on one model."""

    model: Path
    repetitions: int
    n_prompt: int
    n_gen: int
    builds: tuple[BuildBench, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "nativellm.bench-builds/1", "model": str(self.model), "repetitions": self.repetitions,
                "n_prompt": self.n_prompt, "n_gen": self.n_gen, "builds": [b.to_dict() for b in self.builds]}  # fmt: skip


def resolve_model(paths: Paths, model: str | None) -> Path:
    """A GGUF path, or the file of a registered model."""
    if model is None:
        raise UsageError("`bench builds` needs --model", "pass a registered model name or a GGUF path")
    path = Path(model).expanduser()
    if path.is_file():
        return path

    try:
        return ModelRegistry(paths).get(model).path
    except NotFoundError:
        raise NotFoundError(
            f"model {model!r} is neither a file nor a registered model", "see `nativellm model list`"
        ) from None


def bench_store_builds(
    paths: Paths,
    ids: Sequence[str],
    model: str | None,
    *,
    repetitions: int,
    n_prompt: int,
    n_gen: int,
    on_round: Callable[[int, str], None] | None = None,
) -> BuildsReport:
    """The use case behind `bench builds`: the named builds (default: all) of the store, on one model."""
    store = Store(paths)
    records = [store.get(i) for i in ids] if ids else store.list_builds()
    gguf = resolve_model(paths, model)
    results = bench_builds(
        records, gguf, repetitions=repetitions, n_prompt=n_prompt, n_gen=n_gen, on_round=on_round
    )
    return BuildsReport(gguf, repetitions, n_prompt, n_gen, tuple(results))


def instance_endpoint(paths: Paths, name: str) -> tuple[str, str | None]:
    """The base URL (and API key, if any) of a configured instance."""
    spec = load_spec(paths.config, name)
    if spec is None:
        raise NotFoundError(f"no instance named {name!r}", "see `nativellm instance list`, or pass --url")
    key = None
    if spec.api_key_file:
        try:
            key = Path(spec.api_key_file).read_text().strip()
        except OSError as exc:
            raise NotFoundError(f"cannot read the API key file {spec.api_key_file}: {exc.strerror}",
                                "run bench as a user who can read it") from None  # fmt: skip
    return base_url(spec), key
