"""Per-stream decode speed: a burst-delivered stream must not read as thousands of tokens a second."""

from __future__ import annotations

from nativellm.ops.loadgen import RequestResult


def test_decode_speed_prefers_the_servers_own_timing() -> None:
    # 8 tokens that reached the client in one read: the client-side span is 0.1 ms.
    burst = RequestResult(True, ttft_s=1.0, total_s=1.0001, completion_tokens=8, server_decode_tps=150.0)
    assert burst.decode_tps == 150.0


def test_without_server_timings_the_client_span_is_used() -> None:
    assert RequestResult(True, ttft_s=1.0, total_s=2.0, completion_tokens=11).decode_tps == 10.0
    assert RequestResult(True, ttft_s=1.0, total_s=1.0, completion_tokens=1).decode_tps == 0.0
