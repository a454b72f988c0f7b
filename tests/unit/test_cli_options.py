"""Option parsing shared by the CLI's commands."""

from __future__ import annotations

import pytest

from nativellm.cli.app import _gpu_indices
from nativellm.errors import UsageError


def test_gpu_indices_parse_and_reject_with_a_hint() -> None:
    assert _gpu_indices(None) is None
    assert _gpu_indices("0, 1,") == (0, 1)
    with pytest.raises(UsageError) as exc:
        _gpu_indices("0,a")
    assert "--gpus '0,a' is not a list of GPU indices" in exc.value.message and "--gpus 0,1" in exc.value.hint
