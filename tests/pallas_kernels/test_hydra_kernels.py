"""Hydra on the SSD kernels (``impl="pallas_gpu"`` / ``"pallas_tpu"``): two SSD directions as one
kernel call over a doubled batch, checked in interpret mode against the ``"xla"`` two-pass form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_jax.ops import ImplementationUnavailableError, hydra
from tests.numerics import assert_close
from tests.ops.test_hydra import make_inputs


@pytest.mark.parametrize("impl, p", [("pallas_gpu", 64), ("pallas_tpu", 64), ("pallas_gpu", 16)])
def test_hydra_on_ssd_kernel_matches_xla(rng, impl, p):
    runs_here = {"pallas_gpu": ("cpu", "gpu"), "pallas_tpu": ("cpu", "tpu")}[impl]
    if jax.default_backend() not in runs_here:
        pytest.skip(f"{impl} runs on {' or '.join(runs_here)} (interpret mode on cpu)")
    # l not a multiple of any chunk; segments (the flipped half restarts per segment); per-head D;
    # p = 16 runs zero-padded to the GPU kernel's 64-column tile.
    kw = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v
          for k, v in make_inputs(rng, b=1, l=70, h=2, p=p, g=1, n=64, segment_ids=True).items()}
    y = hydra(**kw, chunk_size=64, impl=impl)
    y_ref = hydra(**kw, chunk_size=64, impl="xla")
    assert_close(y, y_ref, tol=2e-2, name=f"y ({impl})")  # bf16 tensor-core operands on GPU

    w = jnp.asarray(rng.standard_normal(y_ref.shape), jnp.float32)
    diff = ("x", "dt", "B", "C", "D")

    def loss(impl):
        return lambda a: jnp.sum(hydra(**{**kw, **a}, chunk_size=64, impl=impl) * w)

    args = {k: kw[k] for k in diff}
    got = jax.grad(loss(impl))(args)
    ref = jax.grad(loss("xla"))(args)
    for k in diff:
        assert_close(got[k], ref[k], tol=3e-2, name=f"d loss / d {k} ({impl})")


def test_hydra_kernel_refusal_names_the_constraint(rng):
    kw = make_inputs(rng, b=1, l=8, h=2, p=64, g=1, n=512)
    with pytest.raises(ImplementationUnavailableError, match="state size n must be at most 256"):
        hydra(**kw, impl="pallas_gpu")
