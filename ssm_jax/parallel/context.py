"""Context (sequence) parallelism: the mixers with the ``length`` axis split over a mesh axis.

Every recurrence here is a linear map of its state, ``h_out = T h_in + h_local``, so a sequence
split into ``S`` contiguous shards is scanned in three steps (recurrentgemma's
``multi_shard_correction``; Megatron-LM's context-parallel Mamba):

1. each shard runs the public op (``ssm_jax.ops.*``, any ``impl``, kernels included) on its
   piece from a zero state and returns its outputs, its final state ``h_local`` and its total
   decay ``T`` (selective scan: ``exp(A sum dt)`` per ``(d, n)``; SSD: ``exp(A sum dt)`` per head;
   S4D: ``dA^L`` per mode; S4: the ``2n x 2n`` transition to the power ``L``), zero when a
   segment starts inside the shard;
2. the shards ``all_gather`` those state-sized arrays and each computes the states entering
   every shard by a scan over the shards (``h_in[s + 1] = T[s] h_in[s] + h_local[s]``);
3. each shard adds the incoming state's contribution to its outputs. For the selective scan and
   SSD that is a cheap term, ``y_t += C_t . exp(A sum_{u<=t} dt_u) h_in`` up to the first
   segment start (gated by ``silu(z)`` when the op gates); the S4/S4D scans re-run the op with
   ``initial_state=h_in`` (their correction needs ``dA^t`` for every ``t``, which is what the
   chunked scan computes anyway: twice the O(l h n) scan, no extra memory).

Only states (and, for the convolutions, the ``k - 1`` halo inputs; for Hydra's one-step shift a
one-position halo of outputs) cross devices: no collective has a length-sized axis. Hydra runs
the forward direction with states from the shards before and the backward one with states
from the shards after. ``segment_ids`` cross shards: a shard compares its first id with the
previous shard's last one (a one-id halo) to know whether the incoming state is cut.

The functions take the arguments of their ``ssm_jax.ops`` namesakes plus ``axis``: the mesh
axis the sequence is split over. ``axis=None`` asks :func:`context_axis`: the mesh axis that the
active rules table (:func:`~ssm_jax.parallel.use_rules`, default :data:`~ssm_jax.parallel.DEFAULT_RULES`) maps
``length`` to, when the mesh set with ``jax.set_mesh`` has it with size > 1; without one the
plain op runs, so layers call these unconditionally. Gradients are those of the single-device op
(``jax.shard_map`` differentiates the exchanges: ``all_gather`` transposes to a reduce-scatter
of states, ``ppermute`` to the reverse permutation).
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from ssm_jax import ops
from ssm_jax.ops._prepare import effective_dt, segment_starts
from ssm_jax.parallel.rules import active_rules, context_axis

__all__ = [
    "causal_conv1d",
    "conv1d",
    "hydra",
    "s4_scan",
    "s4d_scan",
    "selective_scan",
    "ssd",
]

_HI = lax.Precision.HIGHEST
_warned: set[str] = set()


def _resolve_axis(op: str, axis: str | None, l: int, *, min_shard: int = 1) -> str | None:
    """``axis`` checked against the mesh and ``l``; None means "run the plain op"."""
    explicit = axis is not None
    axis = axis if explicit else context_axis()
    if axis is None:
        return None
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or axis not in mesh.shape:
        raise ValueError(f"{op}: context axis {axis!r} is not an axis of the mesh set with jax.set_mesh ({dict(mesh.shape)})")
    s = mesh.shape[axis]
    if l % s or l // s < min_shard:
        why = f"{op}: the length l={l} does not split into {s} shards of >= {min_shard} positions over mesh axis {axis!r}"
        if explicit:
            raise ValueError(why)
        if why not in _warned:
            _warned.add(why)
            logging.warning("%s; running on the whole sequence instead", why)
        return None
    return axis


def _check_args(fn, *args, **kwargs) -> None:
    """Run ``fn``'s argument checks (errors naming the argument) on the whole arrays' shapes, with
    no sharding: under an Explicit mesh the op itself cannot trace a length-sharded type.
    ``fn`` may be a ``functools.partial``; its keyword arrays are stripped too."""
    if isinstance(fn, functools.partial):
        fn, args, kwargs = fn.func, fn.args + args, {**fn.keywords, **kwargs}

    def strip(v):
        return jax.ShapeDtypeStruct(jnp.shape(v), jnp.result_type(v)) if hasattr(v, "shape") else v

    arrays = {k: strip(v) for k, v in kwargs.items() if hasattr(v, "shape")}
    static = {k: v for k, v in kwargs.items() if not hasattr(v, "shape")}
    jax.eval_shape(lambda a, kw: fn(*a, **kw, **static), tuple(map(strip, args)), arrays)


def _to_axis(v, dim: int, axis: str):
    """Under an Explicit ``axis``, reshard ``v`` so dimension ``dim`` is split over it (Auto axes
    need nothing: ``shard_map`` reshards its inputs)."""
    if v is None:
        return None
    mesh = jax.sharding.get_abstract_mesh()
    if dict(zip(mesh.axis_names, mesh.axis_types))[axis] != jax.sharding.AxisType.Explicit:
        return v
    spec = list(jax.typeof(v).sharding.spec) + [None] * v.ndim
    spec = spec[: v.ndim]
    spec[dim] = axis
    return jax.sharding.reshard(v, P(*spec))


def _shard_map(body, axis: str, args: tuple, dims: tuple, out_specs):
    """``body(*args)`` manual over ``axis`` only: arguments with a ``dims`` entry are split on that
    dimension, the others (``None`` dims) are replicated; None arguments pass through."""
    present = [i for i, a in enumerate(args) if a is not None]

    def spec(d, nd):
        return P() if d is None else P(*([None] * d + [axis]))

    in_specs = tuple(spec(dims[i], args[i].ndim) for i in present)
    vals = tuple(args[i] if dims[i] is None else _to_axis(args[i], dims[i], axis) for i in present)

    def inner(*vals):
        full = [None] * len(args)
        for i, v in zip(present, vals):
            full[i] = v
        return body(*full)

    # check_vma=False: the ops' scans start from unvarying zeros and the kernels' pallas_calls carry
    # no varying-manual-axes type (jax 0.11.2); every output here is per-shard data, as out_specs say.
    fn = jax.shard_map(inner, mesh=jax.sharding.get_abstract_mesh(), in_specs=in_specs, out_specs=out_specs,
                       axis_names={axis}, check_vma=False)
    return fn(*vals)


# --------------------------------------------------------------------------------------------
# Exchanges between shards (state-sized)


def _from_prev(v, axis: str):
    """Shard ``s`` gets shard ``s - 1``'s ``v``; shard 0 gets zeros."""
    s = lax.axis_size(axis)
    return lax.ppermute(v, axis, [(i, i + 1) for i in range(s - 1)])


def _from_next(v, axis: str):
    """Shard ``s`` gets shard ``s + 1``'s ``v``; the last shard gets zeros."""
    s = lax.axis_size(axis)
    return lax.ppermute(v, axis, [(i + 1, i) for i in range(s - 1)])


def _incoming(decay, local, init, axis: str, apply, *, reverse: bool = False):
    """States entering this shard and leaving the whole sequence.

    ``decay``/``local``: this shard's transition and zero-start final state; ``apply(decay, h)``
    is the transition applied to a state. The shards all-gather both and each runs the same
    scan over shards (forward, or from the last shard when ``reverse``): ``S`` small steps.
    """
    decays = lax.all_gather(decay, axis)
    locals_ = lax.all_gather(local, axis)
    s = locals_.shape[0]
    order = range(s - 1, -1, -1) if reverse else range(s)
    h = jnp.zeros_like(local) if init is None else init.astype(local.dtype)
    entering = [None] * s
    for i in order:
        entering[i] = h
        h = apply(decays[i], h) + locals_[i]
    here = lax.dynamic_index_in_dim(jnp.stack(entering), lax.axis_index(axis), keepdims=False)
    return here, h


def _alive(segment_ids, axis: str, *, reverse: bool = False):
    """``(b, l)`` float: 1 where the state entering the shard still reaches position ``t`` (no
    segment starts in ``[0, t]``, counting a start at 0 when the neighbouring shard's id differs),
    or None without ``segment_ids``. ``reverse``: the same in reversed time (Hydra's backward)."""
    if segment_ids is None:
        return None
    seg = jnp.flip(segment_ids, 1) if reverse else segment_ids
    neighbour = (_from_next(segment_ids[:, :1], axis) if reverse else _from_prev(segment_ids[:, -1:], axis))
    edge = lax.axis_index(axis) == (lax.axis_size(axis) - 1 if reverse else 0)
    first = jnp.logical_and(seg[:, :1] != neighbour, jnp.logical_not(edge))
    starts = segment_starts(seg, first=first)
    return (jnp.cumsum(starts.astype(jnp.int32), axis=1) == 0).astype(jnp.float32)


def _gate(z, f):
    return 1.0 if z is None else jax.nn.silu(z.astype(f))


def _stacked_out(final):
    """A replicated value returned as one row per shard (the caller keeps the last, :func:`_last`)."""
    return final[None]


def _last(stacked, axis: str):
    """The last shard's row of ``(S, ...)`` rows split over ``axis`` (Explicit axes: replicated
    first, an ``S``-row state gather, since a typed slice of a split axis is not defined)."""
    mesh = jax.sharding.get_abstract_mesh()
    if dict(zip(mesh.axis_names, mesh.axis_types))[axis] == jax.sharding.AxisType.Explicit:
        stacked = jax.sharding.reshard(stacked, P())
    return stacked[-1]


# --------------------------------------------------------------------------------------------
# Selective scan (Mamba-1)


def selective_scan(x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None,
                   segment_ids=None, return_final_state=False, impl="auto", axis=None):
    """:func:`ssm_jax.ops.selective_scan` with ``l`` split over mesh axis ``axis`` (see module)."""
    axis = _resolve_axis("selective_scan", axis, jnp.shape(x)[1])
    kw = dict(D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, impl=impl)
    if axis is None:
        return ops.selective_scan(x, dt, A, B, C, initial_state=initial_state, segment_ids=segment_ids,
                                  return_final_state=return_final_state, **kw)
    # Argument checks (and errors naming the argument) happen on the whole arrays first.
    _check_args(functools.partial(ops.selective_scan, **kw), x, dt, A, B, C, initial_state=initial_state,
                   segment_ids=segment_ids)

    def body(x, dt, A, B, C, D, z, dt_bias, h0, seg):
        f = jnp.promote_types(jnp.float32, x.dtype)
        y0, local = ops.selective_scan(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                                       segment_ids=seg, return_final_state=True, impl=impl)
        b, l, d = x.shape
        Cg = C if C.ndim == 4 else C[:, :, None, :]
        g, n = Cg.shape[-2:]
        A_g = A.astype(f).reshape(g, d // g, n)
        T = jnp.cumsum(effective_dt(dt, dt_bias, dt_softplus, f), axis=1).reshape(b, l, g, d // g)
        alive = _alive(seg, axis)
        keep = 1.0 if alive is None else alive[:, -1][:, None, None]
        decay = jnp.exp(A_g * T[:, -1, :, :, None]).reshape(b, d, n) * keep
        h_in, final = _incoming(decay, local, h0, axis, jnp.multiply)

        # y_t += C_t . exp(A T_t) h_in: one fused elementwise-reduce pass, recomputed (not stored)
        # for the backward pass, so no (b, l, d, n) array is kept.
        @jax.checkpoint
        def correction(Cg, T, h_in, A_g):
            e = jnp.exp(A_g * T[..., None])
            return jnp.sum(Cg.astype(f)[:, :, :, None, :] * e * h_in.reshape(b, 1, g, d // g, n), axis=-1)

        corr = correction(Cg, T, h_in, A_g).reshape(b, l, d)
        if alive is not None:
            corr = corr * alive[..., None]
        y = (y0.astype(f) + corr * _gate(z, f)).astype(y0.dtype)
        return y, _stacked_out(final)

    args = (x, dt, A, B, C, D, z, dt_bias, initial_state, segment_ids)
    dims = (1, 1, None, 1, 1, None, 1, None, None, 1)
    y, final = _shard_map(body, axis, args, dims, (P(None, axis), P(axis)))
    return (y, _last(final, axis)) if return_final_state else y


# --------------------------------------------------------------------------------------------
# SSD (Mamba-2) and Hydra


def _ssd_shard(x, dt, A, B, C, dt_bias, dt_softplus, h0, seg, alive, chunk_size, impl, axis, *, D=None, z=None,
               reverse=False):
    """One direction of SSD on this shard, corrected with the incoming state: ``(y, final)``.

    ``seg`` is in this direction's time order (flipped for Hydra's backward pass), ``alive``
    from :func:`_alive`; ``reverse``: the incoming state comes from the shards after."""
    f = jnp.promote_types(jnp.float32, x.dtype)
    y0, local = ops.ssd(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                        segment_ids=seg, return_final_state=True, impl=impl)
    b, l, h, p = x.shape
    Cg = C if C.ndim == 4 else C[:, :, None, :]
    g, n = Cg.shape[-2:]
    T = jnp.cumsum(effective_dt(dt, dt_bias, dt_softplus, f), axis=1)  # (b, l, h)
    keep = 1.0 if alive is None else alive[:, -1][:, None]
    decay = jnp.exp(A.astype(f) * T[:, -1]) * keep  # (b, h)
    h_in, final = _incoming(decay, local, h0, axis, lambda a, s: a[..., None, None] * s, reverse=reverse)
    ch = jnp.einsum("blgn,bgkpn->blgkp", Cg.astype(f), h_in.reshape(b, g, h // g, p, n), precision=_HI)
    scale = jnp.exp(A.astype(f) * T)
    if alive is not None:
        scale = scale * alive[..., None]
    corr = ch.reshape(b, l, h, p) * scale[..., None]
    y = (y0.astype(f) + corr * _gate(z, f)).astype(y0.dtype)
    return y, final


def ssd(x, dt, A, B, C, *, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None,
        segment_ids=None, return_final_state=False, impl="auto", axis=None):
    """:func:`ssm_jax.ops.ssd` with ``l`` split over mesh axis ``axis`` (see module)."""
    axis = _resolve_axis("ssd", axis, jnp.shape(x)[1])
    kw = dict(chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, impl=impl)
    if axis is None:
        return ops.ssd(x, dt, A, B, C, initial_state=initial_state, segment_ids=segment_ids,
                       return_final_state=return_final_state, **kw)
    _check_args(functools.partial(ops.ssd, **kw), x, dt, A, B, C, initial_state=initial_state, segment_ids=segment_ids)

    def body(x, dt, A, B, C, D, z, dt_bias, h0, seg):
        y, final = _ssd_shard(x, dt, A, B, C, dt_bias, dt_softplus, h0, seg, _alive(seg, axis), chunk_size, impl,
                              axis, D=D, z=z)
        return y, _stacked_out(final)

    args = (x, dt, A, B, C, D, z, dt_bias, initial_state, segment_ids)
    dims = (1, 1, None, 1, 1, None, 1, None, None, 1)
    y, final = _shard_map(body, axis, args, dims, (P(None, axis), P(axis)))
    return (y, _last(final, axis)) if return_final_state else y


# Hydra's implementations -> the SSD implementation its passes run on.
_HYDRA_SSD_IMPL = {"matrix": "quadratic"}


def hydra(x, dt, A, B, C, *, D=None, chunk_size=256, dt_bias=None, dt_softplus=False, segment_ids=None,
          impl="auto", axis=None):
    """:func:`ssm_jax.ops.hydra` with ``l`` split over mesh axis ``axis``.

    Per shard, the forward SSD takes its state from the shards before and the backward SSD
    (run on the locally flipped piece) from the shards after; then the one-step shifts take
    one output position from the neighbouring shard (a ``(b, 1, h, p)`` halo each way).
    """
    axis = _resolve_axis("hydra", axis, jnp.shape(x)[1], min_shard=1)
    kw = dict(D=D, chunk_size=chunk_size, dt_bias=dt_bias, dt_softplus=dt_softplus, segment_ids=segment_ids)
    if axis is None:
        return ops.hydra(x, dt, A, B, C, impl=impl, **kw)
    from ssm_jax.ops.hydra import REGISTRY as HYDRA_REGISTRY, canonicalize

    args = canonicalize(x, dt, A, B, C, **kw)  # checks every argument; D -> (h, p)
    HYDRA_REGISTRY.resolve(impl, args)  # an impl that cannot run raises here, as in ops.hydra
    ssd_impl = _HYDRA_SSD_IMPL.get(impl, impl)

    def body(x, dt, A, B, C, D, dt_bias, seg):
        f = jnp.promote_types(jnp.float32, x.dtype)
        flip = lambda t: jnp.flip(t, axis=1)  # noqa: E731
        fw, _ = _ssd_shard(x, dt[:, :, 0], A, B[:, :, 0], C[:, :, 0], dt_bias, dt_softplus, None, seg,
                           _alive(seg, axis), chunk_size, ssd_impl, axis)
        bw, _ = _ssd_shard(flip(x), flip(dt[:, :, 1]), A, flip(B[:, :, 1]), flip(C[:, :, 1]), dt_bias, dt_softplus,
                           None, None if seg is None else flip(seg), _alive(seg, axis, reverse=True), chunk_size,
                           ssd_impl, axis, reverse=True)
        bw = flip(bw)  # original time order: bw[i] sees positions >= i
        # shift: out[i] = fw[i - 1] + bw[i + 1], zero across a segment boundary (and at the ends).
        prev = jnp.concatenate([_from_prev(fw[:, -1:], axis), fw[:, :-1]], axis=1)
        nxt = jnp.concatenate([bw[:, 1:], _from_next(bw[:, :1], axis)], axis=1)
        if seg is not None:
            seg_prev = jnp.concatenate([_from_prev(seg[:, -1:], axis), seg[:, :-1]], axis=1)
            seg_next = jnp.concatenate([seg[:, 1:], _from_next(seg[:, :1], axis)], axis=1)
            # The zeros a ppermute delivers at the ends multiply zero halos, so their ids do not matter.
            prev = jnp.where((seg_prev == seg)[..., None, None], prev, 0)
            nxt = jnp.where((seg_next == seg)[..., None, None], nxt, 0)
        out = prev.astype(f) + nxt.astype(f)
        if D is not None:
            out = out + D * x.astype(f)
        return out.astype(x.dtype)

    a = args
    vals = (a["x"], a["dt"], a["A"], a["B"], a["C"], a["D"], a["dt_bias"], a["segment_ids"])
    return _shard_map(body, axis, vals, (1, 1, None, 1, 1, None, None, 1), P(None, axis))


# --------------------------------------------------------------------------------------------
# S4D / S4 scans (linear time-invariant: the transition over a shard is dA^L)


def _matrix_power(M, k: int):
    """``M^k`` for a batch of square matrices by repeated squaring (k >= 1)."""
    result = None
    base = M
    while k:
        if k & 1:
            result = base if result is None else jnp.einsum("...ij,...jk->...ik", result, base, precision=_HI)
        k >>= 1
        if k:
            base = jnp.einsum("...ij,...jk->...ik", base, base, precision=_HI)
    return result


def _lti_scan(op_name, op, u, dA, dB, C, D, initial_state, segment_ids, chunk_size, axis, *, dense):
    axis = _resolve_axis(op_name, axis, jnp.shape(u)[1])
    kw = dict(D=D, chunk_size=chunk_size)
    if axis is None:
        return op(u, dA, dB, C, initial_state=initial_state, segment_ids=segment_ids, **kw)
    _check_args(functools.partial(op, **kw), u, dA, dB, C, initial_state=initial_state, segment_ids=segment_ids)

    def body(u, dA, dB, C, D, h0, seg):
        l = u.shape[1]
        _, local = op(u, dA, dB, C, D=D, segment_ids=seg, chunk_size=chunk_size)
        ctype = local.dtype
        alive = _alive(seg, axis)
        keep = jnp.ones((u.shape[0],), jnp.float32) if alive is None else alive[:, -1]
        if dense:
            # S4 acts on [x, conj(x)]: the full real-linear transition T (2n x 2n), its L-th power.
            n = dB.shape[-1]
            dAc = dA.astype(ctype)
            T = jnp.concatenate([dAc, jnp.conj(jnp.roll(dAc, n, axis=-1))], axis=1)
            TL = _matrix_power(T, l)[:, :n]  # (h, n, 2n)
            decay = keep[:, None, None, None] * TL  # (b, h, n, 2n)

            def apply(a, x):
                full = jnp.concatenate([x, jnp.conj(x)], axis=-1)
                return jnp.einsum("bhij,bhj->bhi", a, full, precision=_HI)
        else:
            decay = keep[:, None, None] * dA.astype(ctype) ** l  # (b, h, n)
            apply = jnp.multiply
        h_in, final = _incoming(decay.astype(ctype), local, h0, axis, apply)
        if alive is not None:
            h_in = h_in * alive[:, :1, None]  # cut when a segment starts at the shard's first position
        # The correction needs dA^t for every t: re-running the chunked scan from h_in computes it.
        y, _ = op(u, dA, dB, C, D=D, initial_state=h_in, segment_ids=seg, chunk_size=chunk_size)
        return y, _stacked_out(final)

    args = (u, dA, dB, C, D, initial_state, segment_ids)
    y, final = _shard_map(body, axis, args, (1, None, None, None, None, None, 1), (P(None, axis), P(axis)))
    return y, _last(final, axis)


def s4d_scan(u, dA, dB, C, *, D=None, initial_state=None, segment_ids=None, chunk_size=None, axis=None):
    """:func:`ssm_jax.ops.s4d_scan` with ``l`` split over mesh axis ``axis``: ``(y, final_state)``."""
    return _lti_scan("s4d_scan", ops.s4d_scan, u, dA, dB, C, D, initial_state, segment_ids, chunk_size, axis,
                     dense=False)


def s4_scan(u, dA, dB, C, *, D=None, initial_state=None, segment_ids=None, chunk_size=None, axis=None):
    """:func:`ssm_jax.ops.s4_scan` with ``l`` split over mesh axis ``axis``: ``(y, final_state)``."""
    return _lti_scan("s4_scan", ops.s4_scan, u, dA, dB, C, D, initial_state, segment_ids, chunk_size, axis,
                     dense=True)


# --------------------------------------------------------------------------------------------
# Short convolutions: a halo of k - 1 inputs


def _halo_conv(op_name, op, left: int, x, weight, bias, segment_ids, activation, impl, axis):
    k = jnp.shape(weight)[-1]
    right = k - 1 - left
    axis = _resolve_axis(op_name, axis, jnp.shape(x)[1], min_shard=max(left, right, 1))
    kw = dict(activation=activation, impl=impl)
    if axis is None:
        return op(x, weight, bias, segment_ids=segment_ids, **kw)
    _check_args(functools.partial(op, **kw), x, weight, bias, segment_ids=segment_ids)

    def body(x, weight, bias, seg):
        l = x.shape[1]
        xs, ss = [x], [seg]
        if left:
            xs.insert(0, _from_prev(x[:, l - left:], axis))
            ss.insert(0, None if seg is None else _from_prev(seg[:, l - left:], axis))
        if right:
            xs.append(_from_next(x[:, :right], axis))
            ss.append(None if seg is None else _from_next(seg[:, :right], axis))
        # At the sequence's ends the halo is zeros (the op's own zero padding), whatever its ids.
        s_all = None if seg is None else jnp.concatenate(ss, axis=1)
        y = op(jnp.concatenate(xs, axis=1), weight, bias, segment_ids=s_all, **kw)
        return y[:, left:left + l]

    return _shard_map(body, axis, (x, weight, bias, segment_ids), (1, None, None, 1), P(None, axis))


def causal_conv1d(x, weight, bias=None, *, segment_ids=None, activation=None, impl="auto", axis=None):
    """:func:`ssm_jax.ops.causal_conv1d` with ``l`` split over ``axis``: the previous shard's last
    ``k - 1`` inputs come by ``ppermute``."""
    return _halo_conv("causal_conv1d", ops.causal_conv1d, jnp.shape(weight)[-1] - 1, x, weight, bias, segment_ids,
                      activation, impl, axis)


def conv1d(x, weight, bias=None, *, segment_ids=None, activation=None, impl="auto", axis=None):
    """:func:`ssm_jax.ops.conv1d` (centered) with ``l`` split over ``axis``: halos from both sides."""
    return _halo_conv("conv1d", ops.conv1d, (jnp.shape(weight)[-1] - 1) // 2, x, weight, bias, segment_ids,
                      activation, impl, axis)
