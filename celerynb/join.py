"""The join rule: how the chunks' results become one result, in chunk order.

If every chunk returned a DataFrame, every one a Series, every one an Index,
or every one an ndarray, they are concatenated in chunk order (pandas keeps
index, column order and dtypes; NumPy keeps dtype and trailing shape). If
every chunk returned a list, the lists are concatenated. Anything else comes
back as a list with one entry per chunk.
"""

from __future__ import annotations

from itertools import chain
from typing import Any, Literal

from .inputs import _numpy, _pandas, numpy, pandas

Category = Literal["DataFrame", "Series", "Index", "ndarray", "list", "other"]


def _category(value: object) -> Category:
    pd, np = _pandas(), _numpy()
    if pd is not None and isinstance(value, pd.DataFrame):
        return "DataFrame"
    if pd is not None and isinstance(value, pd.Series):
        return "Series"
    if pd is not None and isinstance(value, pd.Index):
        return "Index"
    if np is not None and isinstance(value, np.ndarray) and value.ndim > 0:
        return "ndarray"
    if isinstance(value, list):
        return "list"
    return "other"


def join(parts: list[Any]) -> Any:
    """Join the chunks' results in order (see the module docstring for the rule)."""
    categories = [_category(p) for p in parts]
    kinds = set(categories)
    if len(kinds) > 1 and kinds != {"other"}:
        first = {c: i for i, c in reversed(list(enumerate(categories)))}
        seen = ", ".join(
            f"chunk {i} returned {type(parts[i]).__name__}" for i in sorted(first.values())
        )
        raise TypeError(
            f"func returned inconsistent types across chunks ({seen}): return the same "
            "type from every chunk so the results can be joined"
        )
    kind = categories[0] if categories else "other"
    if kind in ("DataFrame", "Series"):
        out = pandas().concat(parts)
        # pandas re-infers object indexes on concat (pandas-dev/pandas#60159): undo that
        first = parts[0].index
        if out.index.dtype != first.dtype and all(p.index.dtype == first.dtype for p in parts):
            out.index = out.index.astype(first.dtype)
        return out
    if kind == "Index":
        return parts[0].append(parts[1:])
    if kind == "ndarray":
        shapes = {p.shape[1:] for p in parts}
        if len(shapes) > 1:
            raise ValueError(
                f"chunk results have different trailing shapes {sorted(shapes)}: "
                "func must return arrays that agree on every axis but the first"
            )
        np = numpy()
        if any(isinstance(p, np.ma.MaskedArray) for p in parts):
            return np.ma.concatenate(parts, axis=0)
        return np.concatenate(parts, axis=0)
    if kind == "list":
        return list(chain.from_iterable(parts))
    return list(parts)
