"""ssm_jax.ops.selective_scan (Mamba-1): every implementation against a float64 NumPy oracle.

:class:`SelectiveScanContract` is the shared test class; each implementation subclasses it and
sets ``impl`` (kernel tests do the same, e.g. ``class TestMosaicGPU(SelectiveScanContract):
impl = "pallas_gpu"``, importing only the contract so pytest does not collect ours twice).
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_jax.ops import selective_scan, selective_scan_step
from ssm_jax.ops.selective_scan import REGISTRY, XLA_CHUNK_SIZE, _canonicalize, _xla_impl, selective_scan_ref
from tests.numerics import assert_close, check_values_and_grads
from tests.ops.oracles_selective_scan import selective_scan_oracle

# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------

ARRAY_ARGS = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")
# Most contract tests share this shape (and their option pattern), so the jit cache serves
# them with a handful of compilations per implementation.
STD = dict(b=2, l=12, d=4, n=3, g=2)


def make_inputs(rng, b=2, l=7, d=6, n=3, g=None, *, D=True, z=True, dt_bias=True, dt_softplus=True,
                initial_state=True, segment_ids=True, dtype=np.float32):
    """Arguments for selective_scan at a moderate scale (decays in (0.3, 1), states O(1)).

    ``g=None``: B and C are ``(b, l, n)``; otherwise ``(b, l, g, n)``. Returns ``(args, kwargs)``.
    """
    f = lambda v: np.asarray(v, np.float32).astype(dtype)  # noqa: E731
    bg = (b, l, n) if g is None else (b, l, g, n)
    if dt_softplus:
        dt = f(rng.normal(-1.0, 1.0, (b, l, d)))  # softplus(dt + dt_bias) ~ 0.05 .. 1.5
    else:
        dt = f(rng.uniform(0.02, 0.6, (b, l, d)))
    args = dict(
        x=f(rng.standard_normal((b, l, d))),
        dt=dt,
        A=-np.exp(rng.normal(0.0, 0.5, (d, n))).astype(np.float32),
        B=f(rng.standard_normal(bg)),
        C=f(rng.standard_normal(bg)),
    )
    kw = dict(dt_softplus=dt_softplus)
    if D:
        kw["D"] = rng.standard_normal(d).astype(np.float32)
    if z:
        kw["z"] = f(rng.standard_normal((b, l, d)))
    if dt_bias:
        kw["dt_bias"] = rng.normal(0.0, 0.3, d).astype(np.float32) if dt_softplus else rng.uniform(0, 0.2, d).astype(np.float32)
    if initial_state:
        kw["initial_state"] = rng.standard_normal((b, d, n)).astype(np.float32)
    if segment_ids:
        # Random boundaries, ids not monotone (an id may come back: that is a new segment too).
        kw["segment_ids"] = np.cumsum(rng.random((b, l)) < 0.25, axis=1) % 3 + 10
    return args, kw


def oracle(args, kw):
    kw = {k: v for k, v in kw.items() if k != "return_final_state"}
    return selective_scan_oracle(**args, **kw)


def split_kw(args, kw):
    """``(arrays, static)``: the nine differentiable inputs, and everything else."""
    arrays = {**args, **{k: v for k, v in kw.items() if k in ARRAY_ARGS}}
    return arrays, {k: v for k, v in kw.items() if k not in ARRAY_ARGS}


def canonical(a):
    """The kernels' canonical arguments (``api.selective_scan``'s) for the op's keyword arguments
    ``a``: x, dt, A, B, C and any of D, z, dt_bias, initial_state, segment_ids (others ignored)."""
    return _canonicalize(
        "selective_scan", x=a["x"], dt=a["dt"], A=a["A"], B=a["B"], C=a["C"], D=a.get("D"), z=a.get("z"),
        dt_bias=a.get("dt_bias"), state=a.get("initial_state"), state_name="initial_state",
        segment_ids=a.get("segment_ids"), step=False,
    )


def kernel_op(api_fn, **tiling):
    """A kernel's api function (canonical arguments in, ``(y, final_state | None)`` out) with
    :func:`selective_scan`'s signature, for :func:`values_and_grads`."""

    def op(*, dt_softplus=False, return_final_state=False, **a):
        y, h = api_fn(**canonical(a), dt_softplus=dt_softplus, return_final_state=return_final_state, **tiling)
        return (y, h) if return_final_state else y

    return op


def values_and_grads(rng, dims, op, *, dtype=np.float32, tol, grad_tol, reference_impl="scan"):
    """``op`` (with :func:`selective_scan`'s signature) on :func:`make_inputs` ``(**dims)`` with
    every option, at ``dtype``: y and the final state against the float64 oracle (on the inputs
    widened to float32), every gradient against ``impl=reference_impl``
    (:func:`tests.numerics.check_values_and_grads`)."""
    args, kw = make_inputs(rng, **dims, dtype=dtype)
    up = lambda v: np.asarray(jnp.asarray(v, jnp.float32))  # noqa: E731
    expected = oracle({k: up(v) for k, v in args.items()}, {**kw, "z": up(kw["z"])})
    arrays, static = split_kw(args, kw)
    run = lambda fn: lambda a: fn(**a, **static, return_final_state=True)  # noqa: E731
    y, h = check_values_and_grads(run(op), run(functools.partial(selective_scan, impl=reference_impl)), arrays,
                                  expected, rng, tol=tol, grad_tol=grad_tol)
    assert y.dtype == jnp.dtype(dtype) and h.dtype == jnp.float32


def _as(dtype, tree):
    return jax.tree.map(lambda v: np.asarray(v, dtype) if np.issubdtype(np.asarray(v).dtype, np.floating) else v, tree)


# Optional-argument grid: a 2^(8-4) fractional factorial of resolution IV (generators E=BCD,
# F=ACD, G=ABC, H=ABD). Its 16 rows contain every on/off combination of ANY three options (and
# the all-off and all-on rows), where the full 2^8 grid would cost 256 compilations. Among them:
# dt_bias without dt_softplus, where the bias is still added (the documented choice).
OPTIONS = ("D", "z", "dt_bias", "dt_softplus", "groups", "initial_state", "return_final_state", "segment_ids")


def _option_rows():
    rows = []
    for a, b, c, d in itertools.product((0, 1), repeat=4):
        rows.append(dict(zip(OPTIONS, map(bool, (a, b, c, d, b ^ c ^ d, a ^ c ^ d, a ^ b ^ c, a ^ b ^ d)))))
    return rows


OPTION_ROWS = _option_rows()


def test_option_grid_covers_every_triple():
    for triple in itertools.combinations(OPTIONS, 3):
        seen = {tuple(row[o] for o in triple) for row in OPTION_ROWS}
        assert len(seen) == 8, triple
    assert {tuple(r.values()) for r in OPTION_ROWS} >= {(False,) * 8, (True,) * 8}


# --------------------------------------------------------------------------------------------
# The contract every implementation satisfies
# --------------------------------------------------------------------------------------------


class SelectiveScanContract:
    """Tests shared by every implementation; subclasses set ``impl`` (and may loosen tolerances).

    Settings, named as in the SSD and Hydra contracts: ``impl``; ``reference_impl``, the
    implementation whose float32 gradients this one's are compared with; ``tol`` (float32
    values), ``grad_tol`` (gradients), ``low_precision_tol`` (values, by input dtype).
    """

    impl: str = None
    reference_impl: str = "scan"
    tol = 2e-5
    grad_tol = 1e-4
    low_precision_tol = {"bfloat16": 2e-2, "float16": 4e-3}

    def op(self, *args, **kw):
        return selective_scan(*args, impl=self.impl, **kw)

    def loss_fn(self, static, weights):
        """A scalar of the nine float inputs, through ``y`` and (if returned) the final state."""

        def loss(arrays):
            out = self.op(**arrays, **static)
            y, h = out if static.get("return_final_state") else (out, None)
            total = jnp.sum(y.astype(jnp.promote_types(y.dtype, jnp.float32)) * weights[0])  # f64 stays f64
            return total if h is None else total + jnp.sum(h * weights[1])

        return loss

    # ---- values against the float64 oracle ----

    @pytest.mark.parametrize("row", range(len(OPTION_ROWS)))
    def test_options_match_oracle(self, rng, row):
        opts = OPTION_ROWS[row]
        # Shapes vary with the row, so the grid also covers l = 1, odd lengths, n = 1 and g = d.
        l = (1, 2, 7, 13, 16, 33, 5, 9)[row % 8]
        n = (1, 4)[row % 2]
        g = (2, 3, 6)[row % 3] if opts["groups"] else None
        flags = {k: opts[k] for k in OPTIONS if k not in ("groups", "return_final_state")}
        args, kw = make_inputs(rng, b=2, l=l, d=6, n=n, g=g, **flags)
        y_ref, h_ref = oracle(args, kw)
        out = self.op(**args, **kw, return_final_state=opts["return_final_state"])
        if opts["return_final_state"]:
            y, h = out
            assert h.dtype == jnp.float32
            assert_close(h, h_ref, tol=self.tol, name="final_state")
        else:
            y = out
        assert y.dtype == jnp.float32
        assert_close(y, y_ref, tol=self.tol, name="y")

    # ---- modes that must agree ----

    def test_chaining_two_halves_equals_one_call(self, rng):
        args, kw = make_inputs(rng, **STD, segment_ids=False)
        arrays, static = split_kw(args, kw)
        static["return_final_state"] = True
        split = STD["l"] // 2
        per_position = ("x", "dt", "B", "C", "z")

        def full(a):
            return self.op(**a, **static)

        def chained(a):
            first = {k: v[:, :split] if k in per_position else v for k, v in a.items()}
            second = {k: v[:, split:] if k in per_position else v for k, v in a.items()}
            y1, h1 = self.op(**first, **static)
            y2, h2 = self.op(**{**second, "initial_state": h1}, **static)
            return jnp.concatenate([y1, y2], axis=1), h2

        y_ref, h_ref = oracle(args, kw)
        y_full, h_full = full(arrays)
        y_chain, h_chain = chained(arrays)
        assert_close(y_full, y_ref, tol=self.tol, name="y")
        assert_close(y_chain, y_ref, tol=self.tol, name="y (chained)")
        assert_close(h_chain, h_ref, tol=self.tol, name="final_state (chained)")

        # Gradients of every input agree too, initial_state included.
        wy, wh = rng.standard_normal(y_ref.shape), rng.standard_normal(h_ref.shape)
        loss = lambda f: lambda a: (lambda y, h: jnp.sum(y * wy) + jnp.sum(h * wh))(*f(a))  # noqa: E731
        g_full = jax.grad(loss(full))(arrays)
        g_chain = jax.grad(loss(chained))(arrays)
        for k in ARRAY_ARGS:
            assert_close(g_chain[k], g_full[k], tol=self.grad_tol, name=f"d loss / d {k} (chained)")

    def test_segments_equal_separate_runs(self, rng):
        b, l, d, n = STD["b"], STD["l"], STD["d"], STD["n"]
        args, kw = make_inputs(rng, **STD, segment_ids=False)
        # Row 0: lengths 6, 1, 5 (id 5 comes back after 6: a new segment); row 1: 5, 1, 6.
        seg = np.array([[5] * 6 + [6] + [5] * 5, [0] * 5 + [1] + [2] * 6])
        y, h = self.op(**args, **kw, segment_ids=seg, return_final_state=True)
        per_position = ("x", "dt", "B", "C", "z")
        arrays, static = split_kw(args, kw)
        for i in range(b):
            bounds = [0, *(np.flatnonzero(np.diff(seg[i])) + 1), l]
            for s, (t0, t1) in enumerate(zip(bounds[:-1], bounds[1:])):
                piece = {k: v[i : i + 1, t0:t1] if k in per_position else v for k, v in arrays.items()}
                # initial_state applies to the first segment only; later ones start from zero.
                piece["initial_state"] = kw["initial_state"][i : i + 1] if s == 0 else np.zeros((1, d, n), np.float32)
                y_s, h_s = self.op(**piece, **static, return_final_state=True)
                assert_close(y[i : i + 1, t0:t1], y_s, tol=self.tol, name=f"row {i} segment {s}")
            assert_close(h[i : i + 1], h_s, tol=self.tol, name=f"row {i} final state")

    def test_step_folded_equals_parallel(self, rng):
        args, kw = make_inputs(rng, **STD, segment_ids=False)
        y, h_final = self.op(**args, **kw, return_final_state=True)
        h = kw["initial_state"]
        ys = []
        for t in range(args["x"].shape[1]):
            y_t, h = selective_scan_step(
                args["x"][:, t], args["dt"][:, t], args["A"], args["B"][:, t], args["C"][:, t], h,
                D=kw["D"], z_t=kw["z"][:, t], dt_bias=kw["dt_bias"], dt_softplus=kw["dt_softplus"],
            )
            ys.append(y_t)
        assert h.dtype == jnp.float32
        assert_close(jnp.stack(ys, axis=1), y, tol=self.tol, name="y (step-folded)")
        assert_close(h, h_final, tol=self.tol, name="state (step-folded)")

    def test_jit_and_vmap(self, rng):
        args, kw = make_inputs(rng, **STD)
        arrays, static = split_kw(args, kw)
        seg = static.pop("segment_ids")
        run = lambda a, s: self.op(**a, segment_ids=s, **static, return_final_state=True)  # noqa: E731
        y, h = run(arrays, seg)
        y_jit, h_jit = jax.jit(run)(arrays, seg)
        assert_close(y_jit, y, tol=self.tol, name="jit y")
        assert_close(h_jit, h, tol=self.tol, name="jit final_state")
        # vmap over a new leading axis of the per-example inputs; A, D, dt_bias shared.
        per_example = ("x", "dt", "B", "C", "z", "initial_state")
        stacked = {k: np.stack([v, -0.5 * v]) if k in per_example else v for k, v in arrays.items()}
        seg2 = np.stack([seg, seg[::-1]])
        axes = ({k: 0 if k in per_example else None for k in arrays}, 0)
        y_v, h_v = jax.vmap(run, in_axes=axes)(stacked, seg2)
        for j in range(2):
            y_j, h_j = run({k: v[j] if k in per_example else v for k, v in stacked.items()}, seg2[j])
            assert_close(y_v[j], y_j, tol=self.tol, name=f"vmap y[{j}]")
            assert_close(h_v[j], h_j, tol=self.tol, name=f"vmap final_state[{j}]")

    # ---- gradients ----

    def test_gradients_match_reference(self, rng):
        """Every option: values against the oracle, every gradient against ``reference_impl``."""
        values_and_grads(rng, STD, self.op, tol=self.tol, grad_tol=self.grad_tol, reference_impl=self.reference_impl)

    def test_gradients_match_float64_finite_differences(self, rng):
        args, kw = make_inputs(rng, b=1, l=5, d=4, n=2, g=2, segment_ids=False)
        kw["segment_ids"] = np.array([[3, 3, 3, 4, 4]])
        with jax.enable_x64(True):
            arrays, static = split_kw(*_as(np.float64, (args, kw)))
            static["return_final_state"] = True
            weights = (rng.standard_normal((1, 5, 4)), rng.standard_normal((1, 4, 2)))
            loss = self.loss_fn(static, weights)
            grads = jax.grad(loss)(arrays)
            loss = jax.jit(loss)
            eps = 1e-6
            for k in ARRAY_ARGS:
                assert grads[k].dtype == jnp.float64, k
                v = rng.standard_normal(arrays[k].shape)
                fd = float(loss({**arrays, k: arrays[k] + eps * v}) - loss({**arrays, k: arrays[k] - eps * v})) / (2 * eps)
                ad = float(np.sum(np.asarray(grads[k]) * v))
                assert abs(ad - fd) <= 1e-7 * max(1.0, abs(fd)), f"d loss / d {k} along v: autodiff {ad}, finite differences {fd}"

    # ---- dtypes and extreme inputs ----

    @pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
    def test_low_precision_inputs(self, rng, dtype):
        low = jnp.dtype(dtype)
        args, kw = make_inputs(rng, **STD)
        lowered = lambda v: jnp.asarray(v, low)  # noqa: E731
        args_low = {k: v if k == "A" else lowered(v) for k, v in args.items()}
        kw_low = dict(kw, z=lowered(kw["z"]))
        y, h = self.op(**args_low, **kw_low, return_final_state=True)
        assert y.dtype == low and h.dtype == jnp.float32
        # The oracle sees the same rounded inputs, so what is left is the implementation's error
        # (plus rounding y to `low`); the float32 state must be as accurate as in float32.
        rounded = lambda v: np.asarray(jnp.asarray(v, jnp.float32))  # noqa: E731
        y_ref, h_ref = oracle({k: rounded(v) for k, v in args_low.items()}, dict(kw, z=rounded(kw_low["z"])))
        assert_close(y, y_ref, tol=self.low_precision_tol[dtype], name="y")
        assert_close(h, h_ref, tol=10 * self.tol, name="final_state")
        grads = jax.grad(lambda a: jnp.sum(self.op(**a, **kw_low).astype(jnp.float32) ** 2))(args_low)
        for k, g in grads.items():
            assert g.dtype == args_low[k].dtype and bool(jnp.all(jnp.isfinite(g))), k

    EXTREMES = {
        # name: overrides of make_inputs and transforms of dt and A
        "dt_to_zero": dict(dt_fn=lambda dt: dt * 0 - 40.0),  # softplus(-40 + bias) ~ 1e-17
        # softplus(-20 +- 1) ~ 1e-9, where log(1 + e^u) rounds to 0 in float32: with no D and no
        # initial state y is made of those tiny steps alone (a kernel's softplus once returned 0)
        "dt_underflows_log1p": dict(inputs=dict(D=False, initial_state=False), dt_fn=lambda dt: 0.5 * dt - 20.0),
        "raw_dt_zero": dict(softplus=False, dt_fn=lambda dt: dt * 0),
        "large_dt_negative_A": dict(dt_fn=lambda dt: dt * 0 + 80.0, A_fn=lambda A: A * 10),  # decay 0
        "A_near_zero": dict(A_fn=lambda A: A * 1e-7),  # decay 1 - 1e-7 dt: the state only adds up
        "long_sequence": dict(shape=dict(b=1, l=4096, d=2, n=2, g=None), A_fn=lambda A: A * 1e-3),  # memory ~ 3000 steps
    }

    @pytest.mark.parametrize("case", sorted(EXTREMES))
    def test_extreme_inputs_are_finite_and_correct(self, rng, case):
        c = self.EXTREMES[case]
        softplus = c.get("softplus", True)
        args, kw = make_inputs(rng, **c.get("shape", STD), **c.get("inputs", {}), dt_softplus=softplus, dt_bias=softplus,
                               segment_ids=False)
        args["dt"] = c.get("dt_fn", lambda v: v)(args["dt"]).astype(np.float32)
        args["A"] = c.get("A_fn", lambda v: v)(args["A"]).astype(np.float32)
        arrays, static = split_kw(args, kw)
        static["return_final_state"] = True
        y_ref, h_ref = oracle(args, kw)
        y, h = self.op(**arrays, **static)
        assert_close(y, y_ref, tol=10 * self.tol, name="y")
        assert_close(h, h_ref, tol=10 * self.tol, name="final_state")
        weights = (np.ones(y_ref.shape, np.float32), np.ones(h_ref.shape, np.float32))
        grads = jax.grad(self.loss_fn(static, weights))(arrays)
        for k, g in grads.items():
            assert bool(jnp.all(jnp.isfinite(g))), f"non-finite d loss / d {k}"


class TestScan(SelectiveScanContract):
    impl = "scan"
    reference_impl = "xla"  # gradients against the other implementation, not against itself


class TestXLA(SelectiveScanContract):
    impl = "xla"


# --------------------------------------------------------------------------------------------
# XLA specifics: chunking and memory
# --------------------------------------------------------------------------------------------


def _xla_chunked(chunk_size, *args, return_final_state=False, dt_softplus=False, segment_ids=None, **kw):
    c = canonical({**dict(zip(("x", "dt", "A", "B", "C"), args)), **kw, "segment_ids": segment_ids})
    return _xla_impl(**c, dt_softplus=dt_softplus, return_final_state=True, chunk_size=chunk_size)


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 15, 16, XLA_CHUNK_SIZE])
def test_xla_any_chunk_size_matches_oracle(rng, chunk_size):
    # l = 15: chunk 1, a divisor (5), non-divisors (4, 16 > l), l itself. Segment boundaries at
    # 5 (= a chunk boundary for chunk 5) and 8 (inside a chunk).
    args, kw = make_inputs(rng, b=2, l=15, d=6, n=3, g=3, segment_ids=False)
    kw["segment_ids"] = np.array([[0] * 5 + [1] * 3 + [2] * 7, [4] * 15])
    y_ref, h_ref = oracle(args, kw)
    y, h = _xla_chunked(chunk_size, *args.values(), **kw)
    assert_close(y, y_ref, name="y")
    assert_close(h, h_ref, name="final_state")


def test_xla_chunked_gradients_match_scan(rng):
    args, kw = make_inputs(rng, b=1, l=11, d=4, n=2, g=2)
    arrays = {**args, **{k: v for k, v in kw.items() if k in ARRAY_ARGS}}
    static = {k: v for k, v in kw.items() if k not in ARRAY_ARGS}

    def loss(chunk_size, a):
        a = dict(a)
        y, h = (_xla_chunked(chunk_size, *(a.pop(k) for k in ("x", "dt", "A", "B", "C")), **a, **static)
                if chunk_size else selective_scan(**a, **static, return_final_state=True, impl="scan"))
        return jnp.sum(jnp.sin(y)) + jnp.sum(h**2)

    expected = jax.grad(functools.partial(loss, None))(arrays)
    got = jax.grad(functools.partial(loss, 4))(arrays)
    for k in ARRAY_ARGS:
        assert_close(got[k], expected[k], tol=1e-4, name=f"d loss / d {k}")


def test_xla_backward_memory_does_not_grow_with_length():
    # Backward of impl="xla" holds (b, chunk, d, n) working arrays plus O(l (d + n)) inputs and
    # cotangents: at n = d = 64, four times the length must cost far less than four times the
    # temporaries (autodiff through one unchunked associative scan costs exactly 4x).
    d = n = 64

    def temp_bytes(l):
        shapes = [(1, l, d), (1, l, d), (d, n), (1, l, n), (1, l, n)]
        args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
        grad = jax.grad(lambda *a: jnp.sum(selective_scan(*a, dt_softplus=True, impl="xla")), argnums=(0, 1, 2, 3, 4))
        return jax.jit(grad).lower(*args).compile().memory_analysis().temp_size_in_bytes

    short, long = temp_bytes(4 * XLA_CHUNK_SIZE), temp_bytes(16 * XLA_CHUNK_SIZE)
    assert long < 2 * short, f"backward temporaries grow {long / short:.2f}x for 4x the length ({short} -> {long} bytes)"


# --------------------------------------------------------------------------------------------
# Registry, exports, references
# --------------------------------------------------------------------------------------------


def test_registry_auto_and_names():
    assert {"auto", "scan", "xla"} <= set(REGISTRY.names())
    assert REGISTRY["scan"].auto_backends == ()  # the reference is never picked by "auto"
    args, _ = make_inputs(np.random.default_rng(0), l=3)
    if jax.default_backend() == "cpu":
        assert REGISTRY.resolve("auto", canonical(args))[0] == "xla"


def test_shared_B_with_grouped_C(rng):
    # B without a group axis is shared by all channels while C has g = 3 groups.
    args, kw = make_inputs(rng, l=6, g=3)
    args["B"] = args["B"][:, :, 0]
    assert_close(selective_scan(**args, **kw), oracle(args, kw)[0])


def test_reference_and_auto_agree_with_oracle(rng):
    args, kw = make_inputs(rng, l=6)
    y_ref = oracle(args, kw)[0]
    assert_close(selective_scan_ref(**args, **kw), y_ref)
    assert_close(selective_scan(**args, **kw), y_ref)


# --------------------------------------------------------------------------------------------
# Bad input: a ValueError/TypeError naming the argument
# --------------------------------------------------------------------------------------------

b_, l_, d_, n_ = 2, 5, 6, 3


def _zeros(*shape, dtype=np.float32):
    return np.zeros(shape, dtype)


_GOOD = dict(x=_zeros(b_, l_, d_), dt=_zeros(b_, l_, d_), A=-np.ones((d_, n_), np.float32),
             B=_zeros(b_, l_, n_), C=_zeros(b_, l_, n_))
# case: (overrides of _GOOD, error type, pattern after "selective_scan: ")
BAD_CASES = {
    "x rank": (dict(x=_zeros(b_, l_)), ValueError, r"`x` must have shape \(b, l, d\)"),
    "x int dtype": (dict(x=_zeros(b_, l_, d_, dtype=np.int32)), TypeError, r"`x` must have a floating dtype"),
    "x not an array": (dict(x="hello"), TypeError, r"`x` must be an array"),
    "dt shape": (dict(dt=_zeros(b_, l_ + 1, d_)), ValueError,
                 r"`dt` must have shape \(b, l, d\) = \(2, 5, 6\); got \(2, 6, 6\)"),
    "A shape": (dict(A=_zeros(d_ + 1, n_)), ValueError, r"`A` must have shape \(d, n\) = \(6, \?\); got \(7, 3\)"),
    "A rank": (dict(A=_zeros(d_)), ValueError, r"`A` must have shape \(d, n\)"),
    "A complex": (dict(A=_zeros(d_, n_, dtype=np.complex64)), TypeError, r"`A` must be real; got complex"),
    "A int": (dict(A=_zeros(d_, n_, dtype=np.int32)), TypeError, r"`A` must have a floating dtype"),
    "B state size": (dict(B=_zeros(b_, l_, n_ + 1)), ValueError, r"`B` must have shape \(b, l, n\) = \(2, 5, 3\)"),
    "B length": (dict(B=_zeros(b_, l_ - 1, 1, n_)), ValueError, r"`B` must have shape .*; got \(2, 4, 1, 3\)"),
    "B rank 5": (dict(B=_zeros(b_, l_, 1, 1, n_)), ValueError, r"`B` must have shape .* or \(b, l, g, n\)"),
    "C batch": (dict(C=_zeros(b_ + 1, l_, n_)), ValueError, r"`C` must have shape .*; got \(3, 5, 3\)"),
    "C int": (dict(C=_zeros(b_, l_, n_, dtype=np.int8)), TypeError, r"`C` must have a floating dtype"),
    "groups of B and C differ": (dict(B=_zeros(b_, l_, 2, n_), C=_zeros(b_, l_, 3, n_)), ValueError,
                                 r"`C` must have shape .*\(b, l, g, n\) = \(2, 5, 2, 3\)"),
    "groups do not divide d": (dict(B=_zeros(b_, l_, 4, n_), C=_zeros(b_, l_, 4, n_)), ValueError,
                               r"`B` and `C` have g=4 groups, which must divide the d=6 channels"),
    "empty length": (dict(x=_zeros(b_, 0, d_), dt=_zeros(b_, 0, d_), B=_zeros(b_, 0, n_), C=_zeros(b_, 0, n_)),
                     ValueError, r"`x` must have a non-empty 'l' axis"),
    "D shape": (dict(D=_zeros(d_, 1)), ValueError, r"`D` must have shape \(d\) = \(6\); got \(6, 1\)"),
    "D int": (dict(D=_zeros(d_, dtype=np.int32)), TypeError, r"`D` must have a floating dtype"),
    "z shape": (dict(z=_zeros(b_, l_, d_ + 1)), ValueError, r"`z` must have shape \(b, l, d\)"),
    "dt_bias shape": (dict(dt_bias=_zeros(d_ + 2)), ValueError, r"`dt_bias` must have shape \(d\)"),
    "initial_state shape": (dict(initial_state=_zeros(b_, n_, d_)), ValueError,
                            r"`initial_state` must have shape \(b, d, n\) = \(2, 6, 3\); got \(2, 3, 6\)"),
    "initial_state int": (dict(initial_state=_zeros(b_, d_, n_, dtype=np.int32)), TypeError,
                          r"`initial_state` must have a floating dtype"),
    "segment_ids shape": (dict(segment_ids=_zeros(b_, l_ + 1, dtype=np.int32)), ValueError,
                          r"`segment_ids` must have shape \(b, l\) = \(2, 5\)"),
    "segment_ids float": (dict(segment_ids=_zeros(b_, l_)), TypeError, r"`segment_ids` must have an integer dtype"),
    "segment_ids bool": (dict(segment_ids=_zeros(b_, l_, dtype=bool)), TypeError,
                         r"`segment_ids` must have an integer dtype"),
    "dt_softplus not bool": (dict(dt_softplus=1), TypeError, r"`dt_softplus` must be a bool"),
    "return_final_state not bool": (dict(return_final_state="yes"), TypeError, r"`return_final_state` must be a bool"),
    "impl not a string": (dict(impl=None), TypeError, r"`impl` must be a string"),
    "impl unknown": (dict(impl="cuda"), ValueError, r"unknown impl='cuda'"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_names_the_argument(case):
    override, error, pattern = BAD_CASES[case]
    with pytest.raises(error, match=r"^selective_scan: .*" + pattern):
        selective_scan(**{**_GOOD, **override})


_GOOD_STEP = dict(x_t=_zeros(b_, d_), dt_t=_zeros(b_, d_), A=-np.ones((d_, n_), np.float32), B_t=_zeros(b_, n_),
                  C_t=_zeros(b_, n_), state=_zeros(b_, d_, n_))
STEP_BAD_CASES = {
    "x_t rank": (dict(x_t=_zeros(b_, 1, d_)), ValueError, r"`x_t` must have shape \(b, d\)"),
    "dt_t int": (dict(dt_t=_zeros(b_, d_, dtype=np.int32)), TypeError, r"`dt_t` must have a floating dtype"),
    "B_t shape": (dict(B_t=_zeros(b_, n_ + 1)), ValueError, r"`B_t` must have shape \(b, n\) = \(2, 3\)"),
    "C_t groups": (dict(C_t=_zeros(b_, 4, n_)), ValueError, r"`B_t` and `C_t` have g=4 groups"),
    "state shape": (dict(state=_zeros(b_, d_)), ValueError, r"`state` must have shape \(b, d, n\)"),
    "state missing": (dict(state=None), TypeError, r"`state` must be an array"),
    "z_t shape": (dict(z_t=_zeros(b_, d_ + 1)), ValueError, r"`z_t` must have shape \(b, d\)"),
    "A complex": (dict(A=_zeros(d_, n_, dtype=np.complex64)), TypeError, r"`A` must be real"),
    "dt_softplus": (dict(dt_softplus=None), TypeError, r"`dt_softplus` must be a bool"),
}


@pytest.mark.parametrize("case", sorted(STEP_BAD_CASES))
def test_step_bad_input_names_the_argument(case):
    override, error, pattern = STEP_BAD_CASES[case]
    with pytest.raises(error, match=r"^selective_scan_step: .*" + pattern):
        selective_scan_step(**{**_GOOD_STEP, **override})
