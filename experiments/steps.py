"""The training step as pure functions of the train state: loss, gradient accumulation, update.

:func:`make_train_steps` jits :func:`train_step` for one step and for a ``lax.scan`` of ``n``
steps over stacked batches (``config.steps_per_call``). Both read nothing but their arguments and
the frozen :class:`StepSpec`, so the trainer's loop passes the state in and takes it back.

The model's non-parameter state ``state["rest"]`` (BatchNorm running statistics) is what the
forward leaves in the model: :func:`loss_fn` returns it beside the loss, and each microbatch's
forward starts from the previous one's, as consecutive forward passes of a PyTorch model would.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from experiments import tasks as tasks_lib

__all__ = ["REST", "StepSpec", "make_train_steps", "reseed", "rest_of", "train_step"]

# The train state's "rest": every model variable that is neither a parameter nor an RNG stream
# (BatchNorm's nnx.BatchStat). RNG streams are re-derived each step (reseed), never carried.
REST = nnx.Not(nnx.Any(nnx.Param, nnx.RngState))


def rest_of(model: nnx.Module) -> nnx.State:
    """``model``'s variables of :data:`REST` (the train state's ``rest``)."""
    return nnx.state(model, REST)


def reseed(rngs: nnx.State, key: jax.Array) -> nnx.State:
    """The model's RNG streams keyed from ``key`` (each stream its own fold-in), counts reset."""
    leaves, treedef = jax.tree.flatten(rngs, is_leaf=lambda x: isinstance(x, nnx.Variable))
    out = []
    for i, v in enumerate(leaves):
        if isinstance(v, nnx.RngKey):
            out.append(v.replace(jax.random.fold_in(key, i)))
        elif isinstance(v, nnx.RngCount):
            out.append(v.replace(jnp.zeros_like(v.get_value())))
        else:
            out.append(v)
    return jax.tree.unflatten(treedef, out)


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """What a train step needs besides the state, the RNG streams and the batch."""

    graphdef: Any  # nnx.GraphDef of the model in train mode
    task: tasks_lib.Task
    num_classes: int
    tx: optax.GradientTransformation
    lr: Callable[[jax.Array], jax.Array]  # the logged learning rate (the "other" group's schedule)
    accum: int  # optim.grad_accum_steps
    seed: int
    mesh: Mesh
    batch_axes: tuple[str, ...]  # mesh axes of the batch dimension (experiments.mesh.batch_axes)


def loss_fn(params, rest, rngs, batch, key, *, spec: StepSpec):
    """``(loss sum, (metric sums, rest after the forward))`` of the train-mode model on ``batch``."""
    # copy=True: fresh Variables at this (grad) trace level, which a BatchNorm may then update;
    # the ones `rest` arrives in belong to the enclosing jit/scan trace and refuse mutation.
    model = nnx.merge(spec.graphdef, params["ssm"], params["other"], reseed(rngs, key), rest, copy=True)
    sums = spec.task.sums(model, batch, spec.num_classes)
    return sums["loss_sum"], (sums, rest_of(model))


def train_step(state: dict, rngs: nnx.State, batch: dict[str, jax.Array], *, spec: StepSpec) -> tuple[dict, dict]:
    """One optimizer step on ``batch``: ``(new state, metrics)``; dropout keyed by (seed, step, microbatch).

    The new state's ``rest`` is the model's after the step's forward pass(es): with
    ``accum > 1`` microbatch ``m`` starts from microbatch ``m - 1``'s (BatchNorm then averages
    each microbatch's statistics into its running averages in turn, so unlike the gradients they
    depend on ``accum``).
    """
    grad_fn = jax.grad(functools.partial(loss_fn, spec=spec), has_aux=True)
    params, step, accum = state["params"], state["step"], spec.accum
    key = jax.random.fold_in(jax.random.key(spec.seed), step)
    if accum == 1:
        grads, (sums, rest) = grad_fn(params, state["rest"], rngs, batch, key)
    else:
        # Microbatch m = rows m, m + accum, ...: every device keeps a share of each one.
        micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1), batch)
        micro = jax.lax.with_sharding_constraint(
            micro, jax.tree.map(lambda _: NamedSharding(spec.mesh, P(None, spec.batch_axes)), micro))

        def body(carry, xs):
            total, rest = carry
            g, (s, rest) = grad_fn(params, rest, rngs, xs[0], jax.random.fold_in(key, xs[1]))
            return (jax.tree.map(jnp.add, total, (g, s)), rest), None

        shapes = jax.eval_shape(lambda: grad_fn(params, state["rest"], rngs, jax.tree.map(lambda x: x[0], micro), key))
        zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), (shapes[0], shapes[1][0]))
        ((grads, sums), rest), _ = jax.lax.scan(body, (zeros, state["rest"]), (micro, jnp.arange(accum)))
    # Mean over every weighted position of the global batch (independent of accum / devices).
    grads = jax.tree.map(lambda g: g / jnp.maximum(sums["weight_sum"], 1.0), grads)
    updates, opt_state = spec.tx.update(grads, state["opt_state"], params)
    new = {"step": step + 1, "params": optax.apply_updates(params, updates), "opt_state": opt_state, "rest": rest}
    metrics = dict(sums, grad_norm=optax.tree.norm(grads), lr=spec.lr(step))
    return new, metrics


def _scan_steps(state, rngs, batches, *, spec: StepSpec):
    return jax.lax.scan(lambda s, b: train_step(s, rngs, b, spec=spec), state, batches)


def make_train_steps(spec: StepSpec, state_shardings, rngs_shardings):
    """``(step, steps)``: jitted :func:`train_step` on one batch, and on ``n`` batches stacked on a
    leading axis in one call (metrics ``(n,)`` per key). Both donate the state.

    A small model's step is a few microseconds of device work behind milliseconds of dispatch, so
    the scan over ``n`` stacked batches runs it at the device's pace: same steps, same result.
    """
    replicated = NamedSharding(spec.mesh, P())
    step = jax.jit(
        functools.partial(train_step, spec=spec),
        in_shardings=(state_shardings, rngs_shardings, NamedSharding(spec.mesh, P(spec.batch_axes))),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )
    steps = jax.jit(
        functools.partial(_scan_steps, spec=spec),
        in_shardings=(state_shardings, rngs_shardings, NamedSharding(spec.mesh, P(None, spec.batch_axes))),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )
    return step, steps
