"""SSD (Mamba-2): every implementation against float64 oracles, against each other, and in every mode.

:class:`SSDContract` is the one test class of the op; each implementation subclasses it (kernel
tests too: set ``impl``, and override ``dims``/``chunk_sizes``/``op`` for what the kernel needs).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_jax.ops.ssd import REGISTRY, canonicalize, ssd, ssd_matrix, ssd_step
from tests.numerics import assert_close, check_values_and_grads
from tests.ops.oracles_ssd import ssd_oracle

ARGS = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")


def make_inputs(rng, *, b, l, h, p, g, n, dtype=np.float32, options=("all",), dt_softplus=None, flat_bc=False):
    """Random SSD arguments. ``options``: a subset of the optional arguments D (per head and
    channel, ``(h, p)``), z, dt_bias, initial_state, segment_ids -- or "all" of them -- and
    D_head (``D`` per head, ``(h,)``)."""
    opts = set(options)
    if "all" in opts:
        opts |= {"D", "z", "dt_bias", "initial_state", "segment_ids"}
    softplus = "dt_bias" in opts if dt_softplus is None else dt_softplus
    cast = lambda v: np.asarray(v, np.float32).astype(dtype)
    kw = dict(
        x=cast(rng.standard_normal((b, l, h, p))),
        # Raw dt feeds a softplus; otherwise it must already be a positive step.
        dt=cast(rng.standard_normal((b, l, h)) - 1.0 if softplus else rng.uniform(0.05, 0.6, (b, l, h))),
        A=-np.exp(0.5 * rng.standard_normal(h)).astype(np.float32),
        B=cast(rng.standard_normal((b, l, n) if flat_bc else (b, l, g, n))),
        C=cast(rng.standard_normal((b, l, n) if flat_bc else (b, l, g, n))),
        dt_softplus=softplus,
    )
    if "D_head" in opts:
        kw["D"] = rng.standard_normal(h).astype(np.float32)
    if "D" in opts:
        kw["D"] = rng.standard_normal((h, p)).astype(np.float32)
    if "z" in opts:
        kw["z"] = cast(rng.standard_normal((b, l, h, p)))
    if "dt_bias" in opts:
        kw["dt_bias"] = (0.5 * rng.standard_normal(h)).astype(np.float32)
    if "initial_state" in opts:
        kw["initial_state"] = rng.standard_normal((b, h, p, n)).astype(np.float32)
    if "segment_ids" in opts:
        # Three runs per row, one reusing an earlier id (a new segment all the same), and a row
        # with a single segment; boundaries fall inside and at the edges of chunks.
        ids = np.zeros((b, l), np.int32)
        ids[0, l // 3 : 2 * l // 3] = 7
        ids[0, 2 * l // 3 :] = 0
        ids[1:, :] = 3
        if b > 1:
            ids[1, l // 2 :] = 4
        kw["segment_ids"] = ids
    return kw


def oracle(kw):
    ref = {k: v for k, v in kw.items() if k not in ("return_final_state", "chunk_size")}
    return ssd_oracle(**ref)


def f64(v):
    return np.asarray(jnp.asarray(v, jnp.float32), np.float64)


def values_and_grads(rng, dims, op, *, options=("all",), dtype=np.float32, tol, grad_tol, reference_impl="scan"):
    """``op`` (with :func:`ssd`'s signature) on :func:`make_inputs` ``(dims, options, dtype)``:
    y and the final state against the float64 oracle (on the inputs widened to float32), every
    gradient against ``impl=reference_impl`` (:func:`tests.numerics.check_values_and_grads`)."""
    kw = make_inputs(rng, **dims, dtype=dtype, options=options)
    up = {k: (np.asarray(jnp.asarray(v, jnp.float32)) if getattr(v, "dtype", None) == dtype else v) for k, v in kw.items()}
    arrays = {k: kw[k] for k in ARGS if k in kw}
    static = {k: v for k, v in kw.items() if k not in arrays}
    run = lambda fn: lambda a: fn(**a, **static, return_final_state=True)  # noqa: E731
    y, final = check_values_and_grads(run(op), run(functools.partial(ssd, impl=reference_impl)), arrays, oracle(up),
                                      rng, tol=tol, grad_tol=grad_tol)
    assert y.dtype == jnp.dtype(dtype) and final.dtype == jnp.float32


class SSDContract:
    """The behaviour every SSD implementation must have.

    Settings, named as in the selective-scan and Hydra contracts: ``impl``; ``reference_impl``,
    the implementation whose float32 gradients this one's are compared with; ``tol`` (float32
    values), ``grad_tol`` (gradients), ``low_precision_tol`` (values, by input dtype).
    """

    impl: str | None = None
    dims = dict(b=2, l=12, h=4, p=3, g=2, n=5)
    chunk_sizes = (1, 12, 64)  # 1, l, more than l (default_chunk=5 is a non-divisor of l)
    default_chunk = 5
    reference_impl = "scan"  # gradients (fp32) are compared with this implementation's
    tol = 2e-5
    grad_tol = 1e-4
    low_precision_tol = {"bfloat16": 3e-2}

    def op(self, *args, **kwargs):
        return ssd(*args, impl=self.impl, **kwargs)

    def run(self, kw, **extra):
        kw = {**kw, **extra}
        kw.setdefault("chunk_size", self.default_chunk)
        return self.op(**kw)

    # -- values against the float64 oracle ---------------------------------------------------

    @pytest.mark.parametrize(
        "options",
        [(), ("D_head", "z", "flat_bc", "dt_bias"), ("initial_state",), ("segment_ids",), ("all",)],
        ids=lambda o: "+".join(o) or "plain",
    )
    def test_matches_oracle(self, rng, options):
        dims = {**self.dims, "g": 1} if "flat_bc" in options else self.dims
        kw = make_inputs(rng, **dims, options=options, flat_bc="flat_bc" in options)
        y, final = self.run(kw, return_final_state=True)
        y_ref, final_ref = oracle(kw)
        assert y.dtype == jnp.float32 and final.dtype == jnp.float32
        assert_close(y, y_ref, tol=self.tol, name="y")
        assert_close(final, final_ref, tol=self.tol, name="final_state")
        assert isinstance(self.run(kw), jax.Array)  # without return_final_state: y alone

    def test_chunk_sizes(self, rng):
        if not self.chunk_sizes:
            pytest.skip(f"impl={self.impl!r} has no chunks")
        kw = make_inputs(rng, **self.dims)
        y_ref, final_ref = oracle(kw)
        for q in self.chunk_sizes:
            y, final = self.run(kw, chunk_size=q, return_final_state=True)
            assert_close(y, y_ref, tol=self.tol, name=f"y (chunk_size={q})")
            assert_close(final, final_ref, tol=self.tol, name=f"final_state (chunk_size={q})")

    # -- modes ---------------------------------------------------------------------------------

    def test_chaining_halves_and_gradients(self, rng):
        """Two calls chained through initial_state == one call == the reference implementation,
        in values and in the gradients of every input."""
        kw = make_inputs(rng, **self.dims, options=("all",))
        l1 = 7  # not a segment boundary: the second call continues the segment it splits
        assert all(kw["segment_ids"][:, l1] == kw["segment_ids"][:, l1 - 1])
        wy = rng.standard_normal(kw["x"].shape).astype(np.float32)
        wf = rng.standard_normal(kw["initial_state"].shape).astype(np.float32)
        seq = ("x", "dt", "B", "C", "z", "segment_ids")

        def whole(p, impl=None):
            op = self.op if impl is None else (lambda **a: ssd(**a, impl=impl))
            return op(**{**kw, **p}, chunk_size=self.default_chunk, return_final_state=True)

        def chained(p):
            p = {**kw, **p}
            first = {k: (v[:, :l1] if k in seq else v) for k, v in p.items()}
            second = {k: (v[:, l1:] if k in seq else v) for k, v in p.items()}
            y1, f1 = self.run(first, return_final_state=True)
            y2, f2 = self.run({**second, "initial_state": f1}, return_final_state=True)
            return jnp.concatenate([y1, y2], axis=1), f2

        def grad(fn):
            def value(p):
                y, f = fn(p)
                return jnp.sum(y * wy) + jnp.sum(f * wf), (y, f)

            return jax.jit(jax.grad(value, has_aux=True))

        params = {k: jnp.asarray(kw[k]) for k in ARGS}
        g_whole, (y_whole, f_whole) = grad(whole)(params)
        g_chain, (y_chain, f_chain) = grad(chained)(params)
        g_ref, (y_ref, f_ref) = grad(lambda p: whole(p, self.reference_impl))(params)
        assert_close(y_chain, y_whole, tol=self.tol, name="y, chained vs one call")
        assert_close(f_chain, f_whole, tol=self.tol, name="final_state, chained vs one call")
        assert_close(y_whole, y_ref, tol=self.tol, name=f"y vs impl={self.reference_impl!r}")
        for k in ARGS:
            assert_close(g_chain[k], g_whole[k], tol=self.grad_tol, name=f"d{k}, chained vs one call")
            assert_close(g_whole[k], g_ref[k], tol=self.grad_tol, name=f"d{k} vs impl={self.reference_impl!r}")

    def test_segments_equal_per_segment_runs(self, rng):
        kw = make_inputs(rng, **self.dims, options=("D", "z", "dt_bias", "initial_state", "segment_ids"))
        y, final = self.run(kw, return_final_state=True)
        ids = kw["segment_ids"]
        for bi in range(ids.shape[0]):
            starts = [0] + [t for t in range(1, ids.shape[1]) if ids[bi, t] != ids[bi, t - 1]]
            for si, (s0, s1) in enumerate(zip(starts, starts[1:] + [ids.shape[1]])):
                part = {k: (v[bi : bi + 1, s0:s1] if k in ("x", "dt", "B", "C", "z") else v) for k, v in kw.items()}
                part.pop("segment_ids")
                # Only the first segment starts from initial_state; later ones from zero.
                part["initial_state"] = kw["initial_state"][bi : bi + 1] * (si == 0)
                y_s, f_s = self.run(part, return_final_state=True)
                assert_close(y[bi : bi + 1, s0:s1], y_s, tol=self.tol, name=f"y row {bi} segment {si}")
            assert_close(final[bi : bi + 1], f_s, tol=self.tol, name=f"final_state row {bi}")

    def test_step_folded_equals_parallel(self, rng):
        kw = make_inputs(rng, **self.dims, options=("D_head", "z", "dt_bias", "initial_state"))
        y, final = self.run(kw, return_final_state=True)

        def fold(state, t):
            x_t, dt_t, B_t, C_t, z_t = t
            return ssd_step(x_t, dt_t, kw["A"], B_t, C_t, state, D=kw["D"], z_t=z_t, dt_bias=kw["dt_bias"],
                            dt_softplus=True)[::-1]

        seq = tuple(jnp.moveaxis(jnp.asarray(kw[k]), 1, 0) for k in ("x", "dt", "B", "C", "z"))
        final_s, y_s = jax.lax.scan(fold, jnp.asarray(kw["initial_state"]), seq)
        assert_close(jnp.moveaxis(y_s, 0, 1), y, tol=self.tol, name="y")
        assert_close(final_s, final, tol=self.tol, name="final_state")

    def test_jit_and_vmap(self, rng):
        kw = make_inputs(rng, **self.dims, options=("D", "z", "dt_bias", "initial_state", "segment_ids"))
        arrays = {k: v for k, v in kw.items() if isinstance(v, np.ndarray)}
        static = {k: v for k, v in kw.items() if k not in arrays}
        stacked = {k: np.stack([v, v[::-1] if v.ndim > 1 else v]) for k, v in arrays.items()}  # 2 problems
        fn = jax.jit(lambda a: self.run({**a, **static}, return_final_state=True))
        y, final = jax.vmap(fn)(stacked)
        for i in range(2):
            y_ref, f_ref = oracle({**{k: v[i] for k, v in stacked.items()}, **static})
            assert_close(y[i], y_ref, tol=self.tol, name=f"vmapped y[{i}]")
            assert_close(final[i], f_ref, tol=self.tol, name=f"vmapped final_state[{i}]")

    # -- gradients -----------------------------------------------------------------------------

    def test_gradients_all_options(self, rng):
        """Values against the float64 oracle, every gradient against ``reference_impl``; every
        option, float32 inputs."""
        values_and_grads(rng, self.dims, self.op, tol=self.tol, grad_tol=self.grad_tol, reference_impl=self.reference_impl)

    def _loss(self, kw, impl_op, wy, wf):
        def loss(p):
            y, f = impl_op(**{**kw, **p}, return_final_state=True)
            return jnp.sum(y * wy) + jnp.sum(f * wf)

        return loss

    def test_gradients_finite_differences_float64(self, rng):
        """Directional derivatives along a random direction per input, float64 central differences."""
        with jax.enable_x64(True):
            tiny = dict(b=1, l=5, h=2, p=2, g=1, n=3)
            kw = make_inputs(rng, **tiny, options=("D_head", "z", "dt_bias", "initial_state", "segment_ids"))
            kw["segment_ids"] = np.array([[0, 0, 0, 1, 1]])
            kw = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype == np.float32 else v) for k, v in kw.items()}
            kw["chunk_size"] = 2
            wy = rng.standard_normal(kw["x"].shape)
            wf = rng.standard_normal(kw["initial_state"].shape)
            params = {k: jnp.asarray(kw[k]) for k in ARGS}
            loss = jax.jit(self._loss(kw, self.op, wy, wf))
            grads = jax.jit(jax.grad(loss))(params)
            eps = 1e-6
            for k in ARGS:
                v = rng.standard_normal(params[k].shape)
                plus = loss({**params, k: params[k] + eps * v})
                minus = loss({**params, k: params[k] - eps * v})
                fd = (plus - minus) / (2 * eps)
                assert grads[k].dtype == jnp.float64, k
                assert_close(jnp.vdot(grads[k], v), fd, tol=1e-7, name=f"d{k} . v")

    # -- dtypes and extremes -------------------------------------------------------------------

    def test_bf16_inputs(self, rng):
        kw = make_inputs(rng, **self.dims, dtype=jnp.bfloat16, options=("all",))
        y, final = self.run(kw, return_final_state=True)
        assert y.dtype == jnp.bfloat16 and final.dtype == jnp.float32
        y_ref, final_ref = oracle({k: (f64(v) if getattr(v, "dtype", None) == jnp.bfloat16 else v) for k, v in kw.items()})
        assert_close(y, y_ref, tol=self.low_precision_tol["bfloat16"], name="y")
        assert_close(final, final_ref, tol=self.low_precision_tol["bfloat16"], name="final_state")
        grads = jax.grad(lambda x: jnp.sum(self.run({**kw, "x": x}).astype(jnp.float32)))(jnp.asarray(kw["x"]))
        assert grads.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(grads.astype(jnp.float32))))

    def _finite_and_correct(self, kw, tol, what):
        y, final = self.op(**kw, return_final_state=True)
        y_ref, final_ref = oracle(kw)
        assert_close(y, y_ref, tol=tol, name=f"y ({what})")
        assert_close(final, final_ref, tol=tol, name=f"final_state ({what})")
        params = {k: jnp.asarray(kw[k]) for k in ("x", "dt", "A", "B", "C", "D", "dt_bias", "initial_state")}
        loss = lambda p: sum(jnp.sum(o) for o in self.op(**{**kw, **p}, return_final_state=True))
        for k, gk in jax.jit(jax.grad(loss))(params).items():
            assert bool(jnp.all(jnp.isfinite(gk))), f"non-finite gradient for {k} ({what})"

    def test_extremes_finite_and_correct(self, rng):
        """A long sequence whose heads have dt -> 0, dt huge (decay underflows to exactly 0),
        A -> 0, and ordinary values: outputs match the oracle, gradients are finite."""
        assert self.dims["h"] >= 4
        kw = make_inputs(rng, **{**self.dims, "l": 384}, options=("D", "dt_bias", "initial_state", "segment_ids"))
        kw["dt_softplus"] = True
        kw["dt"][..., 0] = -40.0  # softplus(-40 + bias) ~ 1e-17
        kw["dt"][..., 1] = 1e4
        kw["A"][2] = -1e-7
        kw["chunk_size"] = 64
        y, final = self.op(**kw, return_final_state=True)
        y_ref, final_ref = oracle(kw)
        assert_close(y, y_ref, tol=10 * self.tol, name="y")
        assert_close(final, final_ref, tol=10 * self.tol, name="final_state")
        params = {k: jnp.asarray(kw[k]) for k in ("x", "dt", "A", "B", "C", "D", "dt_bias", "initial_state")}
        loss = lambda p: sum(jnp.sum(o) for o in self.op(**{**kw, **p}, return_final_state=True))
        for k, gk in jax.jit(jax.grad(loss))(params).items():
            assert bool(jnp.all(jnp.isfinite(gk))), f"non-finite gradient for {k}"


class TestXLA(SSDContract):
    impl = "xla"


class TestScan(SSDContract):
    impl = "scan"
    chunk_sizes = ()
    reference_impl = "quadratic"  # gradients of the ground truth checked against another form


class TestQuadratic(SSDContract):
    impl = "quadratic"
    chunk_sizes = ()


def test_auto_resolves_and_matches_oracle(rng):
    kw = make_inputs(rng, **SSDContract.dims)
    name, _ = REGISTRY.resolve("auto", canonicalize(**kw))
    assert name in REGISTRY
    # On CPU "xla"; on a GPU too, as the kernel needs a head dim that is a multiple of 64 (p = 3).
    if jax.default_backend() in ("cpu", "gpu"):
        assert name == "xla"
    y, final = ssd(**kw, chunk_size=5, return_final_state=True)
    y_ref, final_ref = oracle(kw)
    assert_close(y, y_ref, name="y")
    assert_close(final, final_ref, name="final_state")


# -- module-level: the matrix, the registry, bad input -----------------------------------------


def test_ssd_matrix_times_x_equals_oracle(rng):
    kw = make_inputs(rng, **SSDContract.dims, options=("dt_bias", "segment_ids"))
    M = ssd_matrix(kw["dt"], kw["A"], kw["B"], kw["C"], dt_bias=kw["dt_bias"], dt_softplus=True,
                   segment_ids=kw["segment_ids"])
    assert M.shape == (2, 4, 12, 12)
    y_ref, _ = oracle(kw)
    # HIGHEST: a float32 einsum may run at TF32 on a GPU.
    Mx = jnp.einsum("bhij,bjhp->bihp", M, kw["x"], precision=jax.lax.Precision.HIGHEST)
    assert_close(Mx, y_ref, name="M x")
    assert not bool(jnp.any(jnp.triu(M, 1))), "M must be lower triangular"


def test_registry_names_and_unknown_impl(rng):
    assert {"xla", "scan", "quadratic"} <= set(REGISTRY.names())
    kw = make_inputs(rng, b=1, l=3, h=2, p=2, g=1, n=2, options=())
    with pytest.raises(ValueError, match="unknown impl='nope'"):
        ssd(**kw, impl="nope")


def _good(rng):
    return make_inputs(rng, b=2, l=6, h=4, p=3, g=2, n=5, options=("all",))


BAD_INPUTS = [
    ("x", lambda kw: kw["x"][0], ValueError, r"ssd: `x` must have shape \(b, l, h, p\)"),
    ("x", lambda kw: kw["x"].astype(np.int32), TypeError, r"ssd: `x` must have a floating dtype"),
    ("dt", lambda kw: kw["dt"][:, :5], ValueError, r"ssd: `dt` must have shape \(b, l, h\) = \(2, 6, 4\); got \(2, 5, 4\)"),
    ("A", lambda kw: kw["A"][:3], ValueError, r"ssd: `A` must have shape \(h\) = \(4\); got \(3,\)"),
    ("A", lambda kw: kw["A"].astype(np.complex64), TypeError, r"ssd: `A` must be real"),
    ("B", lambda kw: kw["B"][:, :5], ValueError, r"ssd: `B` must have shape \(b, l, g, n\) = \(2, 6, \?, \?\)"),
    ("C", lambda kw: kw["C"][..., :4], ValueError, r"ssd: `C` must have shape \(b, l, g, n\) = \(2, 6, 2, 5\)"),
    ("B", lambda kw: np.zeros((2, 6, 3, 5), np.float32), ValueError, r"h=4 heads must split evenly into the g=3 groups"),
    ("C", lambda kw: np.zeros((2, 6, 1, 5), np.float32), ValueError, r"ssd: `C` must have shape \(b, l, g, n\) = \(2, 6, 2, 5\)"),
    ("D", lambda kw: np.ones((4, 2), np.float32), ValueError, r"ssd: `D` must have shape \(h\) = \(4\) or \(h, p\) = \(4, 3\)"),
    ("z", lambda kw: kw["z"][:, :, :2], ValueError, r"ssd: `z` must have shape \(b, l, h, p\)"),
    ("dt_bias", lambda kw: np.ones((2,), np.float32), ValueError, r"ssd: `dt_bias` must have shape \(h\) = \(4\)"),
    ("initial_state", lambda kw: kw["initial_state"][:, :, :, :4], ValueError, r"`initial_state` must have shape \(b, h, p, n\) = \(2, 4, 3, 5\)"),
    ("segment_ids", lambda kw: kw["segment_ids"][:, :5], ValueError, r"`segment_ids` must have shape \(b, l\) = \(2, 6\)"),
    ("segment_ids", lambda kw: kw["segment_ids"].astype(np.float32), TypeError, r"`segment_ids` must have an integer dtype"),
    ("chunk_size", lambda kw: 0, ValueError, r"`chunk_size` must be a positive int; got 0"),
    ("chunk_size", lambda kw: 4.0, ValueError, r"`chunk_size` must be a positive int; got 4.0"),
    ("dt_softplus", lambda kw: "yes", TypeError, r"`dt_softplus` must be a bool"),
    ("x", lambda kw: kw["x"][:, :0], ValueError, r"ssd: `x` must have at least one time step"),
]


@pytest.mark.parametrize("arg,make,err,match", BAD_INPUTS, ids=[f"{a}-{i}" for i, (a, *_) in enumerate(BAD_INPUTS)])
def test_bad_input_names_the_argument(rng, arg, make, err, match):
    kw = _good(rng)
    kw[arg] = make(kw)
    if arg == "B" and kw["B"].shape[2] == 3:
        kw["C"] = kw["B"]  # both agree on g=3, which does not divide h=4
    with pytest.raises(err, match=match):
        ssd(**kw, impl="xla")


def test_step_bad_input_names_the_argument(rng):
    kw = make_inputs(rng, b=2, l=1, h=4, p=3, g=2, n=5, options=())
    state = np.zeros((2, 4, 3, 5), np.float32)
    args = (kw["x"][:, 0], kw["dt"][:, 0], kw["A"], kw["B"][:, 0], kw["C"][:, 0])
    with pytest.raises(ValueError, match=r"ssd_step: `state` must have shape \(b, h, p, n\) = \(2, 4, 3, 5\)"):
        ssd_step(*args, state[..., :2])
    with pytest.raises(ValueError, match=r"ssd_step: `B_t` must have shape \(b, g, n\)"):
        ssd_step(*args[:3], kw["B"], args[4], state)
    with pytest.raises(ValueError, match=r"ssd_step: `x_t` must have shape \(b, h, p\)"):
        ssd_step(kw["x"], *args[1:], state)
