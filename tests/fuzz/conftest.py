"""The fuzz tier: hypothesis drives the parsers that take outside input.

Property, for every target: on any input under 1 MiB the parser returns or raises a NativeLLMError
(never another exception), and its peak Python allocation (tracemalloc) stays under 64 MiB.

Bounded for CI (the whole tier in about a minute on two cores) and reproducible: derandomized, no
example database. For longer or random local runs:

    NATIVELLM_FUZZ_EXAMPLES=20000 python -m pytest tests/fuzz      # examples per target
    NATIVELLM_FUZZ_RANDOM=1 python -m pytest tests/fuzz            # a fresh random seed each run

Any crashing input a run finds is kept as an explicit regression case next to its target.
"""

from __future__ import annotations

import os
import traceback
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from nativellm.errors import NativeLLMError

MiB = 1 << 20
INPUT_LIMIT = MiB
PEAK_LIMIT = 64 * MiB
EXAMPLES = int(os.environ.get("NATIVELLM_FUZZ_EXAMPLES", "600"))

settings.register_profile(
    "nativellm-fuzz",
    max_examples=EXAMPLES,
    deadline=None if EXAMPLES > 1000 else 5000,  # ms per example; long local runs share the CPU
    derandomize=not os.environ.get("NATIVELLM_FUZZ_RANDOM"),
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
settings.load_profile("nativellm-fuzz")

# The largest peak any example reached, per target: a long run prints them (-s) for the record.
PEAKS: dict[str, int] = {}
COUNTS: dict[str, int] = {}


# Crashes known but not fixed yet, as (the file that raises, the exception type): the property
# tolerates them so the tier still hunts for new ones; each must have a strict-xfail regression case
# next to its target. Empty: every crash this tier found (issue 14) is fixed and kept as a case.
KNOWN: dict[tuple[str, type[BaseException]], str] = {}
KNOWN_HITS: dict[tuple[str, type[BaseException]], int] = {}


def known(exc: BaseException) -> tuple[str, type[BaseException]] | None:
    """The KNOWN entry `exc` matches: the innermost nativellm frame of its traceback, and its type."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/src/nativellm/" in f.filename]
    if not frames:
        return None
    where = frames[-1].filename.split("/src/nativellm/", 1)[1]
    for (file, kind), _ in KNOWN.items():
        if where == file and isinstance(exc, kind):
            return file, kind
    return None


def check(target: str, fn: Callable[[], Any], size: int) -> Any:
    """Run one example: fn returns or raises NativeLLMError, within PEAK_LIMIT bytes."""
    assert size <= INPUT_LIMIT
    tracemalloc.start()
    try:
        try:
            result = fn()
        except NativeLLMError as exc:
            assert exc.message, "a NativeLLMError without a message"
            result = exc
        except Exception as exc:
            entry = known(exc)
            if entry is None:
                raise
            KNOWN_HITS[entry] = KNOWN_HITS.get(entry, 0) + 1
            result = exc
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    PEAKS[target] = max(PEAKS.get(target, 0), peak)
    COUNTS[target] = COUNTS.get(target, 0) + 1
    assert peak < PEAK_LIMIT, f"{target}: peak allocation {peak / MiB:.1f} MiB on a {size}-byte input"
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory per module, reused by every example (hypothesis forbids function-scoped ones)."""
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="session", autouse=True)
def _report() -> Iterator[None]:
    yield
    if os.environ.get("NATIVELLM_FUZZ_REPORT"):
        for target in sorted(COUNTS):
            print(f"\nfuzz {target}: {COUNTS[target]} examples, peak {PEAKS[target] / MiB:.2f} MiB")
        for (file, kind), hits in sorted(KNOWN_HITS.items(), key=str):
            print(f"\nfuzz known crash {file} {kind.__name__}: {hits} examples")
