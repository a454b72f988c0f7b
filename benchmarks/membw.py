"""Memory read bandwidth with a small multithreaded read loop (numpy releases the GIL in sum)."""

from __future__ import annotations

import os
import threading
import time

import numpy as np


def read_bandwidth(size_bytes: int = 1 << 30, threads: int | None = None, repeats: int = 5) -> float:
    """Best-of-`repeats` bytes/second reading a buffer far larger than the caches."""
    threads = threads or os.cpu_count() or 1
    data = np.ones(size_bytes // 8, dtype=np.float64)
    chunks = np.array_split(data, threads)
    best = 0.0
    for _ in range(repeats):
        barrier = threading.Barrier(threads + 1)

        def work(chunk: np.ndarray, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            chunk.sum()

        pool = [threading.Thread(target=work, args=(c,)) for c in chunks]
        for t in pool:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in pool:
            t.join()
        best = max(best, data.nbytes / (time.perf_counter() - t0))
    return best


if __name__ == "__main__":
    print(f"{read_bandwidth() / 1e9:.2f} GB/s")
