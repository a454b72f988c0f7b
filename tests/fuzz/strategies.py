"""Shared hypothesis strategies: JSON values and texts of every shape."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=30,
)


def json_objects(
    keys: list[str], value_for: dict[str, st.SearchStrategy[Any]] | None = None
) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts with some of `keys` (each with a value of any JSON type, or a likely one) and stray keys."""
    value_for = value_for or {}
    fixed = {k: st.one_of(value_for.get(k, json_values), json_values) for k in keys}
    return st.builds(
        lambda chosen, extra: {**extra, **chosen},
        st.fixed_dictionaries({}, optional=fixed),
        st.dictionaries(st.text(max_size=10), json_values, max_size=3),
    )
