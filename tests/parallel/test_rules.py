"""Logical axis rules -> PartitionSpecs, and a sharded forward on a simulated 8-device CPU mesh."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from ssm_jax import parallel
from ssm_jax.models import LanguageModel, LanguageModelConfig, Mamba2Config
from tests import xla_flags

ROOT = Path(__file__).resolve().parents[2]


class FakeMesh:
    """Only ``.shape`` is consulted by logical_spec."""

    def __init__(self, **shape):
        self.shape = shape


def test_logical_spec_rules():
    rules = [("embed", "fsdp"), ("inner", "tensor"), ("heads", "tensor"), ("batch", ("data", "fsdp")), ("vocab", None)]
    assert parallel.logical_spec(("embed", "inner"), rules) == P("fsdp", "tensor")
    # an axis already used by another dimension is not reused; unknown / None names replicate
    assert parallel.logical_spec(("inner", "heads"), rules) == P("tensor", None)
    assert parallel.logical_spec((None, "state", "vocab"), rules) == P(None, None, None)
    assert parallel.logical_spec(("batch", "embed"), rules) == P(("data", "fsdp"), None)
    mesh = FakeMesh(data=2, fsdp=4, tensor=2)
    # with a mesh: dimensions not divisible by the axis size, and absent axes, fall back
    assert parallel.logical_spec(("embed", "inner"), rules, mesh=mesh, shape=(6, 8)) == P(None, "tensor")
    assert parallel.logical_spec(("embed",), [("embed", "context"), ("embed", "fsdp")], mesh=mesh, shape=(8,)) == P("fsdp")
    with pytest.raises(ValueError, match="rules"):
        parallel.logical_spec(("embed",), [("embed",)])


def test_logical_to_mesh_on_abstract_model():
    cfg = LanguageModelConfig(vocab_size=64, d_model=16, n_layers=1, mixer="mamba2",
                              mamba2=Mamba2Config(d_state=8, headdim=8), d_intermediate=32)
    _, abstract = parallel.abstract_state(lambda: LanguageModel(cfg, rngs=nnx.Rngs(0)))
    specs = parallel.logical_to_mesh(abstract, parallel.DEFAULT_RULES)
    flat = dict(nnx.to_flat_state(specs))
    assert flat[("embedding", "embedding")].get_value() == P("tensor", "fsdp")
    assert flat[("layers", 0, "mixer", "in_proj", "kernel")].get_value() == P("fsdp", "tensor")
    assert flat[("layers", 0, "mixer", "out_proj", "kernel")].get_value() == P("tensor", "fsdp")
    assert flat[("layers", 0, "mixer", "A_log")].get_value() == P("tensor")
    assert flat[("layers", 0, "mixer", "conv1d", "weight")].get_value() == P("tensor", None)
    assert flat[("layers", 0, "mlp", "fc1", "kernel")].get_value() == P("fsdp", "tensor")
    assert flat[("norm_f", "weight")].get_value() == P("fsdp")
    assert len(flat) == len(nnx.to_flat_state(abstract))


SHARDED_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from ssm_jax import parallel
    from ssm_jax.models import LanguageModel, LanguageModelConfig, Mamba2Config, MambaConfig, AttentionConfig

    assert jax.device_count() == 8, jax.devices()
    cfg = LanguageModelConfig(vocab_size=60, d_model=16, n_layers=3, layer_mixers=("mamba2", "attention", "mamba"),
                              mamba2=Mamba2Config(d_state=8, headdim=8, ngroups=2, chunk_size=4),
                              mamba=MambaConfig(d_state=4), attention=AttentionConfig(num_heads=4), d_intermediate=32)
    make = lambda: LanguageModel(cfg, rngs=nnx.Rngs(0))
    mesh = parallel.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
    model = parallel.init_sharded(make, mesh, parallel.DEFAULT_RULES)
    kernel = model.layers[0].mixer.in_proj.kernel.get_value()
    assert kernel.sharding.spec == jax.P("fsdp", "tensor"), kernel.sharding
    assert len(kernel.addressable_shards) == 8 and kernel.addressable_shards[0].data.shape == (8, 50)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 60, (4, 12)), jnp.int32)
    batch = parallel.logical_spec(("batch", "length"), parallel.DEFAULT_RULES, mesh=mesh, shape=ids.shape)
    ids_sharded = jax.device_put(ids, jax.NamedSharding(mesh, batch))
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    with jax.set_mesh(mesh):
        sharded = fwd(state, ids_sharded)
    assert not sharded.sharding.is_fully_replicated, sharded.sharding
    # The same parameters gathered to one device, run without any sharding.
    one = jax.devices()[0]
    single = jax.device_put(jax.tree.map(np.asarray, state), one)
    reference = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(single, jax.device_put(ids, one))
    assert reference.sharding.device_set == {one}
    err = float(jnp.max(jnp.abs(jax.device_get(sharded) - reference)))
    scale = float(jnp.max(jnp.abs(reference)))
    print(f"max abs error {err:.3e} (scale {scale:.3e})")
    assert err <= 1e-5 * max(scale, 1.0), err
    print("OK")
    """
)


def test_sharded_forward_equals_single_device():
    env = dict(os.environ, XLA_FLAGS=xla_flags.flags(8), JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr[-4000:]

