"""`nativellm bench swap`: what a router swap costs, measured side by side in one run against a
systemd restart of a single-model instance onto the same model, and what warm-up buys the first
user request.

Per round, in this order (the same state at the start of each round):
  swap     `model swap A B` (B loaded first when it fits next to A, then A unloaded; no warm-up),
           then the first streamed token of B from the router
  restart  `systemctl restart` of the single-model instance (serving B) until it is ready, then
           its first streamed token
  cold     unload B, load B without warm-up, one short request (the first after the load)
  steady   the same request three more times (median)
  warm     unload B, load B with warm-up, the same request (the first *user* request)
then back to A loaded, B unloaded. Ratios are of medians over the rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nativellm.client import RequestFailed, timed_request
from nativellm.errors import InstanceError, UsageError
from nativellm.serve.instances import Instances
from nativellm.serve.router import RouterOps, read_api_key
from nativellm.specs import InstanceSpec, http_url

STEADY = 3


@dataclass(frozen=True)
class SwapBench:
    router: str
    single: str
    old: str
    new: str
    swap_s: tuple[float, ...]
    restart_s: tuple[float, ...]
    cold_first_s: tuple[float, ...]
    warm_first_s: tuple[float, ...]
    steady_s: tuple[float, ...]

    @staticmethod
    def _med(xs: Sequence[float]) -> float:
        return statistics.median(xs)

    @property
    def swap_vs_restart(self) -> float:
        return self._med(self.swap_s) / self._med(self.restart_s)

    @property
    def cold_vs_steady(self) -> float:
        return self._med(self.cold_first_s) / self._med(self.steady_s)

    @property
    def warm_vs_steady(self) -> float:
        return self._med(self.warm_first_s) / self._med(self.steady_s)

    def to_dict(self) -> dict[str, Any]:
        def r(xs: Sequence[float]) -> list[float]:
            return [round(x, 4) for x in xs]

        return {
            "schema": "nativellm.bench-swap/1",
            "router": self.router, "single": self.single, "from": self.old, "to": self.new,
            "rounds": len(self.swap_s),
            "swap_s": r(self.swap_s), "restart_s": r(self.restart_s),
            "cold_first_s": r(self.cold_first_s), "warm_first_s": r(self.warm_first_s), "steady_s": r(self.steady_s),
            "median": {"swap_s": round(self._med(self.swap_s), 4), "restart_s": round(self._med(self.restart_s), 4),
                       "cold_first_s": round(self._med(self.cold_first_s), 4),
                       "warm_first_s": round(self._med(self.warm_first_s), 4),
                       "steady_s": round(self._med(self.steady_s), 4)},
            "ratios": {"swap_vs_restart": round(self.swap_vs_restart, 3),
                       "cold_first_vs_steady": round(self.cold_vs_steady, 3),
                       "warm_first_vs_steady": round(self.warm_vs_steady, 3)},
        }  # fmt: skip


def _request(base: str, model: str, key: str | None, *, stream: bool) -> float:
    try:
        return timed_request(base, model, api_key=key, stream=stream)
    except RequestFailed as exc:
        raise InstanceError(
            f"a bench request failed: {exc}", "see `nativellm logs` for the instance"
        ) from None


def bench_swap(
    instances: Instances,
    ops: RouterOps,
    *,
    single: str,
    old: str,
    new: str,
    rounds: int = 3,
    on_step: Callable[[int, str], None] | None = None,
) -> SwapBench:
    router = ops.spec
    one: InstanceSpec = instances.get(single)
    if one.is_router or one.model != new:
        raise UsageError(
            f"--restart {single} must be a single-model instance serving {new} (it serves {one.model_label})",
            f"add one: `nativellm instance add {single} --model {new}` (with the router's settings for {new})",
        )
    key = read_api_key(router)
    base, single_base, single_key = (
        http_url(router.host, router.port),
        http_url(one.host, one.port),
        read_api_key(one),
    )
    step = on_step or (lambda i, what: None)
    swap: list[float] = []
    restart: list[float] = []
    cold: list[float] = []
    warm: list[float] = []
    steady: list[float] = []

    def settle() -> None:  # A loaded, B unloaded
        states = ops.state()
        if states.get(new) is not None and states[new].state in ("loaded", "loading", "sleeping"):
            ops.unload(new)
        if states.get(old) is None or states[old].state not in ("loaded", "loading", "sleeping"):
            ops.load(old, force=True, warmup=True)

    for i in range(1, rounds + 1):
        settle()
        step(i, "swap")
        t0 = time.monotonic()
        ops.swap(old, new, force=True, warmup=False)  # `model swap`, as a user runs it (no fit check)
        swap.append(time.monotonic() - t0 + _request(base, new, key, stream=True))
        step(i, "restart")
        t0 = time.monotonic()
        instances.restart(single)
        restart.append(time.monotonic() - t0 + _request(single_base, new, single_key, stream=True))
        step(i, "warm-up")
        ops.unload(new)
        ops.load(new, force=True, warmup=False)
        cold.append(_request(base, new, key, stream=False))
        steady.append(statistics.median(_request(base, new, key, stream=False) for _ in range(STEADY)))
        ops.unload(new)
        ops.load(new, force=True, warmup=True)
        warm.append(_request(base, new, key, stream=False))
    settle()
    return SwapBench(
        router.name, single, old, new, tuple(swap), tuple(restart), tuple(cold), tuple(warm), tuple(steady)
    )
