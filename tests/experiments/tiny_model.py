"""A tiny causal model for the runner's infrastructure tests (compiles in a second on CPU).

Not an ssm_jax model: embedding -> per-channel linear recurrence ``h_t = a * h_{t-1} + x_t``
(``a = sigmoid(a_logit)``, an SSMParam) -> dropout -> dense logits. It exercises what the trainer
handles (Param vs SSMParam groups, logical axis names, dropout RNG), nothing more.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ssm_jax.nn.params import param

from experiments import tasks


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    vocab_size: int
    d_model: int = 16
    dropout: float = 0.0

    @classmethod
    def from_dict(cls, d):
        return cls(**d)


class TinyLM(nnx.Module):
    def __init__(self, config: TinyConfig, *, rngs: nnx.Rngs):
        v, e = config.vocab_size, config.d_model
        self.embed = param(jax.random.normal(rngs.params(), (v, e)) * 0.5, ("vocab", "embed"))
        self.a_logit = param(jnp.zeros((e,), jnp.float32), ("embed",), ssm=True)
        self.w_in = param(jax.random.normal(rngs.params(), (e, e)) / e**0.5, ("embed", "inner"))
        self.w_out = param(jax.random.normal(rngs.params(), (e, v)) / e**0.5, ("inner", "vocab"))
        self.drop = nnx.Dropout(config.dropout, rngs=rngs)

    def __call__(self, inputs, *, segment_ids=None):
        return self.head(self.features(inputs, segment_ids=segment_ids))

    def features(self, inputs, *, segment_ids=None):
        x = jnp.take(self.embed[...], inputs, axis=0) @ self.w_in[...]
        a = jax.nn.sigmoid(self.a_logit[...])

        def step(h, xt):
            h = a * h + xt
            return h, h

        _, hs = jax.lax.scan(step, jnp.zeros_like(x[:, 0]), jnp.swapaxes(x, 0, 1))
        return self.drop(jnp.swapaxes(hs, 0, 1))

    def head(self, h):
        return jnp.tanh(h) @ self.w_out[...]


def install(monkeypatch=None):
    """Make the trainer build TinyLM for task "lm" (with pytest's monkeypatch, or for good in a subprocess)."""
    cfg = lambda self, model: TinyConfig.from_dict(dict(model))
    build = lambda self, cfg, rngs: TinyLM(cfg, rngs=rngs)
    if monkeypatch is None:
        tasks.LanguageModeling.model_config, tasks.LanguageModeling.build_model = cfg, build
    else:
        monkeypatch.setattr(tasks.LanguageModeling, "model_config", cfg)
        monkeypatch.setattr(tasks.LanguageModeling, "build_model", build)
