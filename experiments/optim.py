"""The optimizer: AdamW with linear warmup + cosine decay, global-norm clipping, and its own group
for SSM parameters.

The trainer splits the model's parameters by type into ``{"ssm": ..., "other": ...}``
(``ssm_jax.nn.SSMParam`` vs every other ``nnx.Param``); this module gives the two groups separate
AdamW instances: ``optim.ssm_lr`` (default ``optim.lr``) and ``optim.ssm_weight_decay`` (default
0) for A / dt / D / B / C of the SSMs, as S4 (Sec. 4) and Mamba (App. E) train them. Weight decay
applies only to matrices (ndim >= 2); biases, norm scales and other vectors are not decayed
(the GPT-3 recipe Mamba follows). Clipping is over the global norm of both groups together.

``optim.ssm_param_groups`` refines the SSM group by the parameter's role in the SSM
(:data:`SSM_ROLES`: ``dt``, ``A``, ``B``, ``C``, ``D``), each with its own ``lr`` and
``weight_decay`` (None: the global ``optim.lr`` / ``optim.weight_decay``), as state-spaces/s4
registers each kernel parameter with its own hyperparameters (``Kernel.register``); roles it does
not list keep ``optim.ssm_lr`` / ``optim.ssm_weight_decay``. A group's ``decay_vectors: True``
decays its vectors too (state-spaces/s4 decays the per-channel ``D``, a plain parameter).
"""

from __future__ import annotations

import jax
import numpy as np
import optax

__all__ = ["SCHEDULES", "SSM_ROLES", "make_optimizer", "make_schedule", "opt_state_shardings", "schedule_change", "ssm_role"]


SCHEDULES = ("cosine", "constant")

# The role in the SSM of each ssm_jax.nn.SSMParam, by attribute name ("<parent>.<name>" first):
# S4/S4D's kernel parameters, Mamba's and Mamba-2's. The low-rank P follows A, as in
# state-spaces/s4 (registered with A's hyperparameters).
SSM_ROLES = {
    "log_dt": "dt", "inv_dt": "dt", "dt_bias": "dt", "dt_proj.bias": "dt",
    "log_A_real": "A", "A_imag": "A", "A_log": "A", "P": "A",
    "B": "B", "C": "C", "D": "D",
}


def ssm_role(path) -> str:
    """The role (a value of :data:`SSM_ROLES`) of the SSM parameter at key ``path``; raises naming it."""
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    names = [n for n in names if n != "value"]
    for key in (".".join(names[-2:]), names[-1] if names else ""):
        if key in SSM_ROLES:
            return SSM_ROLES[key]
    raise ValueError(
        f"optim.ssm_param_groups: the SSM parameter {'.'.join(names)!r} has no role in experiments.optim.SSM_ROLES "
        f"(known: {sorted(SSM_ROLES)}); add it there"
    )


def make_schedule(optim, total_steps: int, peak: float) -> optax.Schedule:
    """0 -> ``peak`` linearly over ``warmup_steps``, then ``optim.schedule``: ``"cosine"`` decays to
    ``peak * min_lr_ratio`` at ``total_steps``; ``"constant"`` stays at ``peak`` (the Mamba paper's
    synthetic tasks train at a constant rate)."""
    warmup = int(optim.warmup_steps)
    if warmup < 0 or total_steps <= 0:
        raise ValueError(f"make_schedule: need warmup_steps >= 0 and total_steps > 0; got {warmup}, {total_steps}")
    kind = optim.get("schedule", "cosine")
    if kind not in SCHEDULES:
        raise ValueError(f"make_schedule: optim.schedule must be one of {SCHEDULES}; got {kind!r}")
    warmup = min(warmup, total_steps)
    if kind == "constant":
        if warmup == 0:
            return optax.constant_schedule(peak)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], boundaries=[warmup]
        )
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=peak * float(optim.min_lr_ratio),
    )


def _adamw(optim, schedule, weight_decay: float, *, decay_vectors: bool = False) -> optax.GradientTransformation:
    """AdamW; weight decay on matrices only, or on every parameter with ``decay_vectors``."""
    return optax.adamw(
        schedule,
        b1=float(optim.b1),
        b2=float(optim.b2),
        eps=float(optim.eps),
        weight_decay=weight_decay,
        mask=lambda params: jax.tree.map(lambda p: decay_vectors or p.ndim >= 2, params),
    )


def make_optimizer(optim, total_steps: int) -> tuple[optax.GradientTransformation, dict[str, optax.Schedule]]:
    """The transform over ``{"ssm": params, "other": params}`` and the lr schedules (for logging):
    ``"other"``, ``"ssm"``, and ``"ssm_<role>"`` for each role of ``optim.ssm_param_groups``."""
    lr = float(optim.lr)
    ssm_lr = lr if optim.ssm_lr is None else float(optim.ssm_lr)
    schedules = {"other": make_schedule(optim, total_steps, lr), "ssm": make_schedule(optim, total_steps, ssm_lr)}
    transforms = {
        "other": _adamw(optim, schedules["other"], float(optim.weight_decay)),
        "ssm": _adamw(optim, schedules["ssm"], float(optim.ssm_weight_decay)),
    }
    groups = dict(optim.get("ssm_param_groups") or {})
    for role, hp in groups.items():
        role_lr = lr if hp.get("lr") is None else float(hp["lr"])
        wd = float(optim.weight_decay) if hp.get("weight_decay") is None else float(hp["weight_decay"])
        schedules[f"ssm_{role}"] = make_schedule(optim, total_steps, role_lr)
        transforms[f"ssm_{role}"] = _adamw(optim, schedules[f"ssm_{role}"], wd, decay_vectors=bool(hp.get("decay_vectors")))

    def labels(params):
        ssm = jax.tree_util.tree_map_with_path(
            lambda path, _: f"ssm_{r}" if (r := ssm_role(path)) in groups else "ssm", params["ssm"]
        ) if groups else jax.tree.map(lambda _: "ssm", params["ssm"])
        return {"ssm": ssm, "other": jax.tree.map(lambda _: "other", params["other"])}

    parts = [optax.multi_transform(transforms, labels if groups else {"other": "other", "ssm": "ssm"})]
    if optim.clip_norm and float(optim.clip_norm) > 0:
        parts.insert(0, optax.clip_by_global_norm(float(optim.clip_norm)))
    return optax.chain(*parts), schedules


def schedule_change(optim, old_total: int, new_total: int, start: int) -> str | None:
    """What changing ``total_steps`` from ``old_total`` to ``new_total`` does to the learning rate
    of the steps a run resumed at ``start`` still has to train, or None if nothing.

    ``"cosine"`` decays over ``total_steps``, so a longer or shorter run changes every remaining
    step's rate (and continuing a finished cosine run restarts the decay from mid-curve);
    ``"constant"`` after its warmup does not depend on it.
    """
    if old_total == new_total or start >= new_total:
        return None
    peak = float(optim.lr)
    counts = np.arange(start, new_total)  # the schedule count of steps start+1 .. new_total
    old = np.asarray(make_schedule(optim, old_total, peak)(counts))
    new = np.asarray(make_schedule(optim, new_total, peak)(counts))
    moved = np.flatnonzero(~np.isclose(old, new, rtol=1e-6, atol=0.0))
    if not len(moved):
        return None
    shown = [int(i) for i in moved[:1]] + ([int(moved[len(moved) // 2]), int(moved[-1])] if len(moved) > 2 else [])
    lrs = ", ".join(f"step {start + i + 1}: {old[i]:.4g} -> {new[i]:.4g}" for i in shown)
    return (f"optim.schedule={optim.get('schedule', 'cosine')!r} decays over total_steps, so {len(moved)} of the "
            f"{new_total - start} remaining steps change learning rate ({lrs})")


def opt_state_shardings(opt_state, params, param_shardings, default):
    """Shardings for ``opt_state`` (abstract): a leaf whose key path ends with a parameter's path
    and has its shape (Adam's ``mu`` / ``nu`` of that parameter) gets that parameter's sharding;
    every other leaf (counts, the masked-out group's placeholders) gets ``default``.

    Matched by path, not with ``optax.tree_utils.tree_map_params``: that initializes the
    transform on a placeholder instead of the parameters, and ``multi_transform``'s labels and
    AdamW's weight-decay mask (functions of the parameter tree) cannot read one (optax 0.2.8); and
    each group's moments have the parameters' structure with the other group masked out, which it
    would not recognize as a copy of the parameters either.
    """
    keystr = jax.tree_util.keystr
    flat_s = jax.tree.leaves(param_shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    by_path = {keystr(path): (tuple(leaf.shape), s)
               for (path, leaf), s in zip(jax.tree_util.tree_flatten_with_path(params)[0], flat_s, strict=True)}

    def pick(path, leaf):
        for i in range(len(path)):  # the longest suffix first, as a parameter path is
            hit = by_path.get(keystr(path[i:]))
            if hit is not None and hit[0] == tuple(leaf.shape):
                return hit[1]
        return default

    return jax.tree_util.tree_map_with_path(pick, opt_state)
