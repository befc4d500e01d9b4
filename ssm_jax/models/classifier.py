"""Sequence classifier (Long Range Arena): residual stack, masked pooling, linear or retrieval head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ssm_jax.models.blocks import Block, apply_norm, make_norm
from ssm_jax.models.config import SequenceClassifierConfig
from ssm_jax.models.stack import make_layers, run_layers
from ssm_jax.nn.linear import Dense, Embed
from ssm_jax.nn.params import canonical_dtype
from ssm_jax.ops._checks import Dims, check_int_array, check_token_ids, to_array

__all__ = ["SequenceClassifier", "pool"]


def pool(h: jax.Array, mask: jax.Array | None, method: str) -> jax.Array:
    """Pool ``h (b, l, e)`` over valid positions (``mask (b, l)``, True = valid) -> ``(b, e)``.

    ``mean``: average of valid positions; ``last`` / ``first``: the last / first valid position.
    A row with no valid position pools to zeros (mean) or position 0 / l-1.
    """
    b, l, _ = h.shape
    if mask is None:
        if method == "mean":
            return jnp.mean(h, axis=1)
        return h[:, -1] if method == "last" else h[:, 0]
    m = mask.astype(bool)
    if method == "mean":
        w = m.astype(h.dtype)[..., None]
        return jnp.sum(h * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)
    if method == "last":
        idx = l - 1 - jnp.argmax(m[:, ::-1], axis=1)
    elif method == "first":
        idx = jnp.argmax(m, axis=1)
    else:
        raise ValueError(f"pool: `method` must be 'mean', 'last' or 'first'; got {method!r}")
    return jnp.take_along_axis(h, idx[:, None, None], axis=1)[:, 0]


class SequenceClassifier(nnx.Module):
    """``inputs (b, l)`` int -> ``logits (b, num_classes)`` float32.

    Any mixer, causal or bidirectional. ``mask (b, l)`` (True = valid token) makes padding
    invisible: it influences neither the mixers' outputs at valid positions (see
    :class:`ssm_jax.models.blocks.Block`), nor BatchNorm statistics, nor the pooling.

    ``norm``/``prenorm`` as in the config: blocks are ``norm -> mixer -> add`` (pre-norm, with a
    final ``norm_f`` before pooling) or ``mixer -> add -> norm`` (post-norm, no ``norm_f``).
    With ``norm="batch"`` the model has running statistics (``nnx.BatchStat``): ``model.train()``
    normalizes with each batch's statistics and updates them, ``model.eval()`` uses them.

    With ``dual_encoder=True`` (LRA Retrieval) both documents go through the same encoder and
    the head sees ``[u, v, u * v, u - v]``: ``head_hidden (4e -> e)``, GELU, ``head (e -> classes)``.
    With ``norm="batch"`` the two documents go through the encoder as one batch of ``2b`` rows
    (padded to the longer length, the padding masked), as state-spaces/s4 concatenates them: one
    set of statistics over both and one update of the running averages per call.

    Token ids must lie in ``[0, vocab_size)``: concrete ids outside it raise a ``ValueError``
    naming them; traced ones (under ``jit``) embed as NaN (as :class:`LanguageModel`).
    """

    def __init__(self, config: SequenceClassifierConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, SequenceClassifierConfig):
            raise TypeError(f"SequenceClassifier: `config` must be a SequenceClassifierConfig; got {type(config).__name__}")
        c = config
        self.config = c
        e = c.d_model
        self.dtype = canonical_dtype("SequenceClassifier", c.dtype)
        if c.encoder == "embed":
            self.embedding = Embed(c.padded_vocab_size, e, dtype=c.dtype, rngs=rngs)
        else:  # one real input per position (a normalized pixel) -> d_model
            self.encoder = Dense(1, e, names=(None, "embed"), dtype=c.dtype, rngs=rngs)
        self.layers = make_layers(c, lambda kind: Block(kind, c, dropout=c.dropout, tie_dropout=c.tie_dropout, dtype=c.dtype, rngs=rngs))
        # Post-norm ends with the last block's norm; state-spaces/s4's SequenceModel has no final
        # norm then either.
        self.norm_f = make_norm(c.norm, e, eps=c.norm_eps, dtype=c.dtype) if c.prenorm else None
        if c.dual_encoder:
            self.head_hidden = Dense(4 * e, e, names=(None, "embed"), dtype=c.dtype, rngs=rngs)
        else:
            self.head_hidden = None
        self.head = Dense(e, c.num_classes, names=("embed", None), dtype=c.dtype, rngs=rngs)

    def _check(self, name: str, inputs, mask):
        op = "SequenceClassifier"
        inputs = to_array(op, name, inputs)
        dims = Dims(op)
        dims.bind(name, inputs, "b l")
        check_int_array(op, name, inputs)
        check_token_ids(op, name, inputs, self.config.vocab_size)
        if mask is not None:
            mask = to_array(op, f"mask of {name}", mask)
            dims.bind(f"mask of {name}", mask, "b l")
        return inputs, mask

    def _encode_inputs(self, inputs: jax.Array) -> jax.Array:
        c = self.config
        if c.encoder == "embed":
            return self.embedding(inputs, num_valid=c.vocab_size)
        x = (inputs.astype(jnp.float32) / 255.0 - c.pixel_mean) / c.pixel_std
        return self.encoder(x[..., None].astype(self.dtype))

    def encode(self, inputs: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """Pooled features ``(b, e)`` in the compute dtype."""
        inputs, mask = self._check("inputs", inputs, mask)
        return self._encode(inputs, None if mask is None else mask.astype(bool))

    def _encode(self, inputs: jax.Array, mask: jax.Array | None) -> jax.Array:
        h = self._encode_inputs(inputs).astype(jnp.float32)
        h, _ = run_layers(self.layers, self.config, h, lambda block, h, _: (block(h, mask=mask), None), remat=self.config.remat)
        h = h.astype(self.dtype) if self.norm_f is None else apply_norm(self.norm_f, h, mask)
        return pool(h, mask, self.config.pooling)

    def _encode_pair(self, inputs1, mask1, inputs2, mask2) -> tuple[jax.Array, jax.Array]:
        """``(u, v)`` of both documents encoded as one batch: rows ``[inputs1; inputs2]``, the
        shorter padded (masked) to the longer length, so BatchNorm sees both at once."""
        inputs1, mask1 = self._check("inputs", inputs1, mask1)
        inputs2, mask2 = self._check("inputs2", inputs2, mask2)
        (b1, l1), (b2, l2) = inputs1.shape, inputs2.shape
        if b1 != b2:
            raise ValueError(f"SequenceClassifier: `inputs` and `inputs2` must have the same batch size; got {b1} and {b2}")
        l = max(l1, l2)

        def padded(ids, mask):
            mask = jnp.ones(ids.shape, bool) if mask is None else mask.astype(bool)
            width = ((0, 0), (0, l - ids.shape[1]))
            return jnp.pad(ids, width), jnp.pad(mask, width)

        (ids1, m1), (ids2, m2) = padded(inputs1, mask1), padded(inputs2, mask2)
        features = self._encode(jnp.concatenate([ids1, ids2]), jnp.concatenate([m1, m2]))
        return features[:b1], features[b1:]

    def __call__(
        self,
        inputs: jax.Array,
        inputs2: jax.Array | None = None,
        *,
        mask: jax.Array | None = None,
        mask1: jax.Array | None = None,
        mask2: jax.Array | None = None,
    ) -> jax.Array:
        """``model(inputs, *, mask=None)``; dual encoder: ``model(inputs1, inputs2, *, mask1, mask2)``."""
        if mask is not None and mask1 is not None:
            raise ValueError("SequenceClassifier: pass `mask` or `mask1`, not both")
        mask1 = mask if mask1 is None else mask1
        if self.config.dual_encoder:
            if inputs2 is None:
                raise ValueError("SequenceClassifier: a dual encoder (dual_encoder=True) needs `inputs2`")
            if self.config.norm == "batch":
                u, v = self._encode_pair(inputs, mask1, inputs2, mask2)
            else:  # per-row norms: two calls give the same features (and the same values as before)
                u, v = self.encode(inputs, mask1), self.encode(inputs2, mask2)
            features = jnp.concatenate([u, v, u * v, u - v], axis=-1)
            x = jax.nn.gelu(self.head_hidden(features), approximate=False)
        else:
            if inputs2 is not None or mask2 is not None:
                raise ValueError("SequenceClassifier: `inputs2`/`mask2` need dual_encoder=True")
            x = self.encode(inputs, mask1)
        return self.head(x, preferred_element_type=jnp.float32).astype(jnp.float32)
