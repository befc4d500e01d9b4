"""Hydra: two SSD passes == materialized quasiseparable matrix == float64 oracles, with gradients
and segments. :class:`HydraContract` is the op's one test class, subclassed per implementation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_jax.ops.hydra import REGISTRY, hydra, hydra_matrix
from tests.numerics import assert_close, check_values_and_grads
from tests.ops.oracles_ssd import hydra_matrix_oracle, hydra_oracle

ARGS = ("x", "dt", "A", "B", "C", "D", "dt_bias")


def make_inputs(rng, *, b, l, h, p, g, n, dtype=np.float32, D="head", dt_softplus=True, segment_ids=False):
    """Random Hydra arguments: ``D`` per "head" ``(h,)``, per "channel" ``(h, p)`` or None;
    ``dt_bias`` with ``dt_softplus``; ``segment_ids`` (a reused id, a one-step segment) if set."""
    cast = lambda v: np.asarray(v, np.float32).astype(dtype)
    kw = dict(
        x=cast(rng.standard_normal((b, l, h, p))),
        dt=cast(rng.standard_normal((b, l, 2, h)) - 1.0 if dt_softplus else rng.uniform(0.05, 0.6, (b, l, 2, h))),
        A=-np.exp(0.5 * rng.standard_normal(h)).astype(np.float32),
        B=cast(rng.standard_normal((b, l, 2, g, n))),
        C=cast(rng.standard_normal((b, l, 2, g, n))),
        dt_softplus=dt_softplus,
    )
    if dt_softplus:
        kw["dt_bias"] = (0.5 * rng.standard_normal(h)).astype(np.float32)
    if D == "head":
        kw["D"] = rng.standard_normal(h).astype(np.float32)
    elif D == "channel":
        kw["D"] = rng.standard_normal((h, p)).astype(np.float32)
    if segment_ids:
        ids = np.full((b, l), 5, np.int32)
        ids[0, 3:7] = 2
        ids[0, 7:] = 5  # an id seen before starts a new segment all the same
        if b > 1:
            ids[1, l - 1 :] = 9  # a one-step segment at the end
        kw["segment_ids"] = ids
    return kw


def oracle(kw):
    return hydra_oracle(**{k: v for k, v in kw.items() if k != "chunk_size"})


def test_oracles_agree(rng):
    """The two float64 oracles (shift/flip composition per segment; closed-form matrix entries)
    are independent constructions of the same mixer."""
    kw = make_inputs(rng, b=2, l=9, h=2, p=2, g=1, n=3, segment_ids=True)
    M = hydra_matrix_oracle(**{k: v for k, v in kw.items() if k != "x"})
    assert_close(np.einsum("bhij,bjhp->bihp", M, kw["x"]), oracle(kw), name="M x vs shift/flip")


class HydraContract:
    """The behaviour every Hydra implementation must have.

    Settings, named as in the SSD and selective-scan contracts: ``impl``; ``reference_impl``, the
    implementation whose float32 gradients this one's are compared with; ``tol`` (float32
    values), ``grad_tol`` (gradients), ``low_precision_tol`` (values, by input dtype).
    """

    impl: str | None = None
    dims = dict(b=2, l=11, h=4, p=3, g=2, n=5)
    chunk_sizes = (1, 4, 11)  # 1, a non-divisor of l, l
    reference_impl = "matrix"
    tol = 2e-5
    grad_tol = 1e-4
    low_precision_tol = {"bfloat16": 3e-2}

    def op(self, *args, **kwargs):
        return hydra(*args, impl=self.impl, **kwargs)

    @pytest.mark.parametrize(
        "variant", ["plain", "D_channel", "g1", "segment_ids"],
    )
    def test_matches_oracle(self, rng, variant):
        dims = {**self.dims, "g": 1} if variant == "g1" else self.dims
        kw = make_inputs(
            rng, **dims, D={"plain": None, "D_channel": "channel"}.get(variant, "head"),
            dt_softplus=variant != "plain", segment_ids=variant == "segment_ids",
        )
        y = self.op(**kw, chunk_size=4)
        assert y.dtype == jnp.float32
        assert_close(y, oracle(kw), tol=self.tol, name="y")

    def test_chunk_sizes(self, rng):
        if not self.chunk_sizes:
            pytest.skip(f"impl={self.impl!r} has no chunks")
        kw = make_inputs(rng, **self.dims, segment_ids=True)
        y_ref = oracle(kw)
        for q in self.chunk_sizes:
            assert_close(self.op(**kw, chunk_size=q), y_ref, tol=self.tol, name=f"y (chunk_size={q})")

    def test_segments_equal_per_segment_runs(self, rng):
        kw = make_inputs(rng, **self.dims, D="channel", segment_ids=True)
        y = self.op(**kw, chunk_size=4)
        ids = kw.pop("segment_ids")
        for bi in range(ids.shape[0]):
            starts = [0] + [t for t in range(1, ids.shape[1]) if ids[bi, t] != ids[bi, t - 1]]
            for s0, s1 in zip(starts, starts[1:] + [ids.shape[1]]):
                part = {k: (v[bi : bi + 1, s0:s1] if k in ("x", "dt", "B", "C") else v) for k, v in kw.items()}
                assert_close(y[bi : bi + 1, s0:s1], self.op(**part, chunk_size=4), tol=self.tol,
                             name=f"row {bi}, segment [{s0}, {s1})")

    def test_gradients_match_reference(self, rng):
        """Values against the oracle, every gradient against ``reference_impl``."""
        kw = make_inputs(rng, **self.dims, D="channel", segment_ids=True)
        arrays = {k: kw[k] for k in ARGS}
        run = lambda fn: jax.jit(lambda a: (fn(**{**kw, **a}, chunk_size=4),))  # noqa: E731
        check_values_and_grads(run(self.op), run(functools.partial(hydra, impl=self.reference_impl)), arrays,
                               (oracle(kw),), rng, tol=self.tol, grad_tol=self.grad_tol, names=("y",))

    def test_gradients_finite_differences_float64(self, rng):
        with jax.enable_x64(True):
            kw = make_inputs(rng, b=1, l=5, h=2, p=2, g=1, n=3, segment_ids=True)
            kw["segment_ids"] = np.array([[0, 0, 0, 1, 1]])
            kw = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype == np.float32 else v) for k, v in kw.items()}
            w = rng.standard_normal(kw["x"].shape)
            params = {k: jnp.asarray(kw[k]) for k in ARGS}
            loss = jax.jit(lambda p: jnp.sum(self.op(**{**kw, **p}, chunk_size=2) * w))
            grads = jax.jit(jax.grad(loss))(params)
            eps = 1e-6
            for k in ARGS:
                v = rng.standard_normal(params[k].shape)
                fd = (loss({**params, k: params[k] + eps * v}) - loss({**params, k: params[k] - eps * v})) / (2 * eps)
                assert grads[k].dtype == jnp.float64, k
                assert_close(jnp.vdot(grads[k], v), fd, tol=1e-7, name=f"d{k} . v")

    def test_bf16_inputs(self, rng):
        kw = make_inputs(rng, **self.dims, dtype=jnp.bfloat16, segment_ids=True)
        y = self.op(**kw, chunk_size=4)
        assert y.dtype == jnp.bfloat16
        as64 = {k: (np.asarray(jnp.asarray(v, jnp.float32), np.float64) if getattr(v, "dtype", None) == jnp.bfloat16 else v)
                for k, v in kw.items()}
        assert_close(y, oracle(as64), tol=self.low_precision_tol["bfloat16"], name="y")

    def test_jit_and_vmap(self, rng):
        kw = make_inputs(rng, **self.dims, segment_ids=True)
        arrays = {k: v for k, v in kw.items() if isinstance(v, np.ndarray)}
        static = {k: v for k, v in kw.items() if k not in arrays}
        stacked = {k: np.stack([v, v[::-1] if v.ndim > 1 else v]) for k, v in arrays.items()}
        y = jax.vmap(jax.jit(lambda a: self.op(**a, **static, chunk_size=4)))(stacked)
        for i in range(2):
            assert_close(y[i], oracle({**{k: v[i] for k, v in stacked.items()}, **static}), tol=self.tol, name=f"y[{i}]")


class TestXLA(HydraContract):
    impl = "xla"


class TestMatrix(HydraContract):
    impl = "matrix"
    chunk_sizes = ()
    reference_impl = "xla"


def test_hydra_matrix_matches_closed_form(rng):
    kw = make_inputs(rng, b=2, l=9, h=4, p=1, g=2, n=3, segment_ids=True)
    kw.pop("x")
    M = hydra_matrix(**kw)
    assert M.shape == (2, 4, 9, 9)
    assert_close(M, hydra_matrix_oracle(**kw), name="M")


def test_auto_is_xla_on_cpu(rng):
    if jax.default_backend() == "cpu":
        assert REGISTRY.resolve("auto", {})[0] == "xla"
    assert {"xla", "matrix"} <= set(REGISTRY.names())


BAD_INPUTS = [
    ("x", lambda kw: kw["x"][..., 0], ValueError, r"hydra: `x` must have shape \(b, l, h, p\)"),
    ("dt", lambda kw: kw["dt"][:, :, 0], ValueError, r"hydra: `dt` must have shape \(b, l, 2, h\) = \(2, 6, 2, 4\); got \(2, 6, 4\)"),
    ("dt", lambda kw: np.concatenate([kw["dt"]] * 2, axis=2), ValueError, r"hydra: `dt` must have shape \(b, l, 2, h\)"),
    ("B", lambda kw: kw["B"][:, :, 0], ValueError, r"hydra: `B` must have shape \(b, l, 2, g, n\) = \(2, 6, 2, \?, \?\)"),
    ("C", lambda kw: kw["C"][..., :2], ValueError, r"hydra: `C` must have shape \(b, l, 2, g, n\) = \(2, 6, 2, 2, 5\)"),
    ("A", lambda kw: kw["A"][:2], ValueError, r"hydra: `A` must have shape \(h\) = \(4\)"),
    ("D", lambda kw: np.ones((3,), np.float32), ValueError, r"hydra: `D` must have shape \(h\) = \(4\) or \(h, p\) = \(4, 3\)"),
    ("dt_bias", lambda kw: np.ones((4, 1), np.float32), ValueError, r"hydra: `dt_bias` must have shape \(h\)"),
    ("segment_ids", lambda kw: np.zeros((2, 5), np.int32), ValueError, r"hydra: `segment_ids` must have shape \(b, l\) = \(2, 6\)"),
    ("chunk_size", lambda kw: -1, ValueError, r"hydra: `chunk_size` must be a positive int"),
    ("x", lambda kw: kw["x"].astype(np.int8), TypeError, r"hydra: `x` must have a floating dtype"),
]


@pytest.mark.parametrize("arg,make,err,match", BAD_INPUTS, ids=[f"{a}-{i}" for i, (a, *_) in enumerate(BAD_INPUTS)])
def test_bad_input_names_the_argument(rng, arg, make, err, match):
    kw = make_inputs(rng, b=2, l=6, h=4, p=3, g=2, n=5, segment_ids=True)
    kw[arg] = make(kw)
    with pytest.raises(err, match=match):
        hydra(**kw, impl="xla")


def test_groups_must_divide_heads(rng):
    kw = make_inputs(rng, b=1, l=4, h=4, p=2, g=3, n=2)
    with pytest.raises(ValueError, match=r"hydra: the h=4 heads must split evenly into the g=3 groups"):
        hydra(**kw)
