"""Shape letters used in every docstring and signature of ssm_jax.

Channels-last everywhere. The legend:

====== ==========================================================
letter meaning
====== ==========================================================
``b``  batch
``l``  sequence length
``d``  channels (``d_inner`` of a Mamba block, ``h`` of S4/S4D)
``h``  heads (Mamba-2, Hydra) or SSM channels (S4, S4D)
``p``  head dim (Mamba-2, Hydra)
``g``  groups of ``B``/``C`` (channels or heads split into ``g`` contiguous groups)
``n``  state size
``q``  chunk size
``k``  convolution width
``v``  vocabulary size
``e``  model width (``d_model``)
====== ==========================================================

The aliases below are jaxtyping annotations, e.g. ``Float[Array, "b l d"]``; they document
shapes and are not checked at run time (checks are explicit, in ``ssm_jax.ops._checks``).
"""

from __future__ import annotations

from jaxtyping import Array, ArrayLike, Bool, Complex, Float, Int, PRNGKeyArray

__all__ = [
    "Array",
    "ArrayLike",
    "Bool",
    "Complex",
    "Float",
    "Int",
    "PRNGKeyArray",
    "SHAPE_LETTERS",
]

SHAPE_LETTERS = {
    "b": "batch",
    "l": "sequence length",
    "d": "channels",
    "h": "heads",
    "p": "head dim",
    "g": "groups of B/C",
    "n": "state size",
    "q": "chunk size",
    "k": "convolution width",
    "v": "vocabulary size",
    "e": "model width (d_model)",
}
