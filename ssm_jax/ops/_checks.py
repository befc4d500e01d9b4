"""Input validation shared by the public ops.

Bad input raises before tracing reaches XLA, with a message that names the op, the argument,
what was given and what was expected, e.g.::

    ssd: `B` must have shape (b, l, g, n) = (2, 64, ?, ?); got (2, 63, 1, 16)
"""

from __future__ import annotations

from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Dims", "FLOAT_DTYPES", "check_bool", "check_float", "check_int_array", "check_positive_int", "check_real",
    "check_segment_ids", "check_token_ids", "to_array",
]

FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16, jnp.float64)


def to_array(op: str, name: str, x: Any) -> jax.Array:
    """``x`` as a JAX array (tracers pass through); a clear TypeError otherwise."""
    if isinstance(x, jax.Array):
        return x
    try:
        return jnp.asarray(x)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{op}: `{name}` must be an array; got {type(x).__name__} ({e})") from None


def _dtype_names(dtypes: Iterable) -> str:
    return ", ".join(jnp.dtype(d).name for d in dtypes)


def check_float(op: str, name: str, x: jax.Array, dtypes=FLOAT_DTYPES) -> None:
    if x.dtype not in [jnp.dtype(d) for d in dtypes]:
        raise TypeError(f"{op}: `{name}` must have a floating dtype ({_dtype_names(dtypes)}); got {x.dtype}")


def check_real(op: str, name: str, x: jax.Array) -> None:
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(f"{op}: `{name}` must be real; got complex dtype {x.dtype}")
    check_float(op, name, x)


def check_int_array(op: str, name: str, x: jax.Array) -> None:
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{op}: `{name}` must have an integer dtype; got {x.dtype}")


def check_segment_ids(op: str, dims: "Dims", segment_ids: Any) -> jax.Array | None:
    """``segment_ids`` as a ``(b, l)`` int32 array bound to ``dims`` (None stays None)."""
    if segment_ids is None:
        return None
    return dims.array("segment_ids", segment_ids, "b l", check=check_int_array).astype(jnp.int32)


def check_token_ids(op: str, name: str, ids: Any, vocab_size: int) -> None:
    """Concrete token ids must lie in ``[0, vocab_size)``; a ValueError names the ones that do not.

    Traced ids pass (their values are unknown here): the embedding then gives NaN for them.
    """
    if isinstance(ids, jax.core.Tracer):
        return
    a = np.asarray(ids)
    bad = (a < 0) | (a >= vocab_size)
    if bad.any():
        values = sorted({int(v) for v in a[bad]})
        where = [tuple(int(i) for i in idx) for idx in np.argwhere(bad)[:3]]
        more = f" and {len(values) - 8} more" if len(values) > 8 else ""
        raise ValueError(f"{op}: `{name}` must hold token ids in [0, {vocab_size}) (vocab_size={vocab_size}); "
                         f"got {values[:8]}{more} ({int(bad.sum())} positions, first at index {where})")


def check_positive_int(op: str, name: str, v: Any) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{op}: `{name}` must be a positive int; got {v!r}")
    return int(v)


def check_bool(op: str, name: str, v: Any) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{op}: `{name}` must be a bool; got {v!r}")
    return bool(v)


class Dims:
    """Binds shape letters to sizes across the arguments of one call.

    >>> dims = Dims("selective_scan")
    >>> dims.bind("x", x, "b l d")       # binds b, l, d
    >>> dims.bind("A", A, "d n")         # checks d, binds n
    """

    def __init__(self, op: str, **known: int):
        self.op = op
        self.sizes: dict[str, int] = dict(known)

    def __getitem__(self, letter: str) -> int:
        return self.sizes[letter]

    def agree(self, *named: tuple[Any, str]) -> None:
        """Bind each unbound letter to the size most of ``(array, spec)`` pairs agree on.

        When several arguments share a letter, the one that disagrees with the others is the one
        :meth:`bind` then names (binding from the first argument alone would blame the others).
        Arrays whose rank does not match their spec do not vote; ties go to the earliest pair.
        """
        votes: dict[str, list[int]] = {}
        for x, spec in named:
            letters = spec.split()
            if x is None or np.ndim(x) != len(letters):
                continue
            for c, s in zip(letters, np.shape(x)):
                votes.setdefault(c, []).append(int(s))
        for c, sizes in votes.items():
            if c not in self.sizes:
                self.sizes[c] = max(sizes, key=sizes.count)  # max keeps the first of equal counts

    def expected(self, spec: str) -> str:
        letters = spec.split()
        sizes = ", ".join(str(self.sizes.get(c, "?")) for c in letters)
        return f"({', '.join(letters)}) = ({sizes})"

    def matches(self, x: jax.Array, spec: str) -> bool:
        letters = spec.split()
        if x.ndim != len(letters):
            return False
        return all(self.sizes.get(c, s) == s for c, s in zip(letters, x.shape))

    def array(self, name: str, v: Any, *specs: str, check=check_real) -> jax.Array:
        """The argument ``name``: ``v`` as an array whose dtype ``check(op, name, array)`` accepts,
        bound by :meth:`bind` to the first matching spec."""
        v = to_array(self.op, name, v)
        check(self.op, name, v)
        self.bind(name, v, *specs)
        return v

    def bind(self, name: str, x: jax.Array, *specs: str) -> str:
        """Check ``x`` against the first matching spec among ``specs``; bind its letters.

        Returns the spec that matched. Raises ValueError listing every accepted spec otherwise.
        """
        for spec in specs:
            if self.matches(x, spec):
                for c, s in zip(spec.split(), x.shape):
                    self.sizes.setdefault(c, int(s))
                return spec
        options = " or ".join(self.expected(s) for s in specs)
        raise ValueError(f"{self.op}: `{name}` must have shape {options}; got {tuple(x.shape)}")
