"""SequenceClassifier's linear pixel encoder (``encoder="linear"``): ids read as intensities."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm_jax.models import SequenceClassifier, SequenceClassifierConfig
from tests.models.test_models import SMALL
from tests.numerics import assert_close


def _clf(**kw):
    return SequenceClassifierConfig(**{"vocab_size": 256, "d_model": 8, "n_layers": 1, "mixer": "s4d",
                                       "num_classes": 3, **SMALL, **kw})


def test_linear_encoder_normalizes_intensities_then_maps_them(rng):
    mean, std = 122.6 / 255, 61.0 / 255
    model = SequenceClassifier(_clf(encoder="linear", pixel_mean=mean, pixel_std=std), rngs=nnx.Rngs(0))
    assert not hasattr(model, "embedding")
    ids = rng.integers(0, 256, (2, 5))
    w = np.asarray(model.encoder.kernel[...], np.float64)  # (1, e)
    b = np.asarray(model.encoder.bias[...], np.float64)
    want = ((ids / 255.0 - mean) / std)[..., None] * w[0] + b
    assert_close(model._encode_inputs(jnp.asarray(ids, jnp.int32)), want, tol=1e-6, name="encoder")
    logits = model(jnp.asarray(ids, jnp.int32))
    assert logits.shape == (2, 3) and np.all(np.isfinite(np.asarray(logits)))


@pytest.mark.parametrize("kw, match", [
    (dict(encoder="conv"), r"`encoder` must be one of"),
    (dict(encoder="linear", vocab_size=300), r"encoder='linear' reads pixel intensities 0..255: `vocab_size` must be 256; got 300"),
    (dict(encoder="linear", pixel_std=0.0), r"`pixel_std` must be a finite float > 0; got 0.0"),
])
def test_encoder_fields_are_checked(kw, match):
    with pytest.raises(ValueError, match=match):
        _clf(**kw)
