"""Comparison helpers for tests: dtype-aware tolerances, errors printed on failure, finite differences."""

from __future__ import annotations

import numpy as np

# Relative (Frobenius) error allowed by default, keyed by the dtype of the value under test.
DEFAULT_TOL = {
    "float64": 1e-10,
    "float32": 2e-5,
    "bfloat16": 2e-2,
    "float16": 4e-3,
    "complex128": 1e-10,
    "complex64": 2e-5,
}


def rel_error(actual, expected) -> float:
    a = np.asarray(actual).astype(np.complex128 if np.iscomplexobj(actual) else np.float64)
    e = np.asarray(expected).astype(np.complex128 if np.iscomplexobj(expected) else np.float64)
    return float(np.linalg.norm((a - e).ravel()) / max(np.linalg.norm(e.ravel()), 1e-30))


def assert_close(actual, expected, *, tol: float | None = None, name: str = "value") -> None:
    """Assert ``actual`` matches ``expected`` in relative norm and elementwise (10x looser).

    Fails on shape mismatch, on any NaN/inf in ``actual`` where ``expected`` is finite, and prints
    the relative error, the max abs error and where it occurs.
    """
    a_raw = np.asarray(actual)
    dtype_name = str(a_raw.dtype)
    if tol is None:
        tol = DEFAULT_TOL.get(dtype_name, 2e-5)
    cplx = np.iscomplexobj(a_raw) or np.iscomplexobj(expected)
    a = a_raw.astype(np.complex128 if cplx else np.float64)
    e = np.asarray(expected).astype(np.complex128 if cplx else np.float64)
    assert a.shape == e.shape, f"{name}: shape {a.shape} != expected {e.shape}"
    bad = ~np.isfinite(a) & np.isfinite(e)
    assert not bad.any(), f"{name}: {int(bad.sum())} non-finite values (first at {np.argwhere(bad)[0].tolist()})"
    if a.size == 0:
        return
    diff = np.abs(a - e)
    err = rel_error(a, e)
    scale = max(float(np.max(np.abs(e))), 1e-30)
    worst = np.unravel_index(np.argmax(diff), diff.shape)
    msg = (
        f"{name} ({dtype_name}): relative error {err:.3e} (tol {tol:.1e}); max abs error "
        f"{diff[worst]:.3e} at {list(worst)} (actual {a[worst]}, expected {e[worst]}, max |expected| {scale:.3e})"
    )
    assert err <= tol, msg
    assert diff[worst] <= 10 * tol * scale, msg


def fd_grad(f, x, eps=1e-6):
    """Central finite differences of the scalar f at the float64 array x."""
    x = np.array(x, np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        g[idx] = (f(xp) - f(xm)) / (2 * eps)
    return g


def check_directional_derivative(loss, params, x, rng, *, x_mask=None, eps=1e-6, rtol=1e-6):
    """Float64 check of ``jax.grad(loss)(params, x)`` along one random direction of every leaf of
    ``params`` and of ``x`` (``x_mask`` zeroes the direction where ``x`` is padding): the central
    finite difference of ``loss`` must equal the analytic directional derivative. Returns the
    gradients ``(g_params, g_x)``."""
    import jax
    import jax.numpy as jnp

    g_p, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    leaves, treedef = jax.tree.flatten(params)
    dirs = [jnp.asarray(rng.standard_normal(np.shape(v))) for v in leaves]
    dx = jnp.asarray(rng.standard_normal(x.shape))
    if x_mask is not None:
        dx = dx * x_mask[..., None]
    shift = lambda s: (jax.tree.unflatten(treedef, [v + s * eps * d for v, d in zip(leaves, dirs)]), x + s * eps * dx)  # noqa: E731
    jloss = jax.jit(loss)
    fd = (jloss(*shift(+1)) - jloss(*shift(-1))) / (2 * eps)
    analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(g_p), dirs)) + jnp.vdot(g_x, dx)
    assert abs(float(fd - analytic)) <= rtol * max(1.0, abs(float(analytic))), (float(fd), float(analytic))
    return g_p, g_x


def check_values_and_grads(run, reference, arrays, expected, rng, *, tol, grad_tol, names=("y", "final_state")):
    """The one values-and-gradients check of the op contracts and kernel tests.

    ``run(arrays)`` returns a tuple of outputs (e.g. ``(y, final_state)``) of the differentiable
    inputs ``arrays`` (a dict, any float dtype). Its outputs must match ``expected`` (the float64
    oracle's, named ``names``) to ``tol``; the gradient of every input, of a random weighting
    ``sum_i sum(float32(out_i) * w_i)`` of the outputs, must keep that input's dtype and match
    ``reference``'s (an independent implementation, run on ``arrays`` widened to float32) to
    ``grad_tol``. One forward pass of ``run`` gives both (:func:`jax.vjp`). Returns the outputs.
    """
    import jax
    import jax.numpy as jnp

    inputs = {k: jnp.asarray(v) for k, v in arrays.items()}
    # The weights are drawn from the outputs' shapes before the run, so that the forward and its
    # pullback compile as one program per implementation (not one each).
    weights = [rng.standard_normal(out.shape).astype(np.float32) for out in jax.eval_shape(run, inputs)]
    cotangents = lambda outs: tuple(jnp.asarray(w, out.dtype) for out, w in zip(outs, weights, strict=True))  # noqa: E731

    def outs_and_grads(fn):
        def both(a):
            outs, pullback = jax.vjp(fn, a)
            return outs, pullback(cotangents(outs))[0]

        return jax.jit(both)

    outs, grads = outs_and_grads(run)(inputs)
    for out, want, name in zip(outs, expected, names, strict=True):
        assert_close(out, want, tol=tol, name=name)
    low = {np.dtype(np.float16), np.dtype(jnp.bfloat16)}
    wide = {k: (jnp.asarray(v, jnp.float32) if np.dtype(v.dtype) in low else jnp.asarray(v)) for k, v in arrays.items()}
    outs_ref, grads_ref = outs_and_grads(reference)(wide)
    for k, v in arrays.items():
        assert grads[k].dtype == jnp.asarray(v).dtype, f"d{k}: dtype {grads[k].dtype}, input {jnp.asarray(v).dtype}"
        assert_close(jnp.asarray(grads[k], jnp.float32), grads_ref[k], tol=grad_tol, name=f"d{k}")
    return outs
