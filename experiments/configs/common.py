"""The schema every experiment config shares, and helpers for config modules.

A config module (``experiments/configs/<suite>/<name>.py``) defines ``get_config(arg=None)``,
starts from :func:`base_config`, fills ``model``, ``data``, ``optim`` and ``eval`` for its
experiment, and returns the config *locked*: assigning a key that does not exist (on the command
line or in a notebook) is an error that lists the keys that do. The trainer checks the value of
every key below before it builds or writes anything (:mod:`experiments.config_checks`; ``model.*``
by the model config dataclasses): a bad value fails at once, naming the key.

Keys (``-1`` in ``mesh`` fills the devices left over by the other axes)::

    seed                  int    model init, data order, dropout
    total_steps           int    optimizer steps (one step = data.batch_size examples)
    log_every             int    train metrics to metrics.jsonl / TensorBoard / progress bar
    eval_every            int    run config.eval (also after the last step)
    checkpoint_every      int    async Orbax save (also after the last step and on SIGTERM)
    steps_per_call        int    optimizer steps per compiled call (a lax.scan over stacked
                                 batches); >1 removes per-step dispatch for small models.
                                 Calls end at every log/eval/checkpoint step: results equal 1's
    mesh.data|fsdp|tensor|context int  device mesh; batch is split over (data, fsdp), parameters
                                 by sharding_rules; mesh.context > 1 splits every sequence
                                 over that many devices (context parallelism: the rules map
                                 `length` to `context`; the length must divide)
    sharding_rules        tuple  ((logical axis name, mesh axis | tuple of axes | None), ...);
                                 default ssm_jax.parallel.DEFAULT_RULES
    model.*                      fields of ssm_jax.models.LanguageModelConfig (task "lm") or
                                 SequenceClassifierConfig ("classification", "retrieval"); passed
                                 to ``Config.from_dict`` unchanged
    data.name             str    a dataset in experiments.data.registry (it fixes the task)
    data.batch_size       int    global train batch (all processes, all microbatches)
    data.*                       dataset-specific keys, read by the dataset's builder; in their
                                 string values (and eval.extra data overrides) "{workdir}" is
                                 replaced by the run's --workdir (config.json keeps "{workdir}")
    optim.lr, warmup_steps, min_lr_ratio, b1, b2, eps, weight_decay, clip_norm
    optim.schedule        str    "cosine" (to lr * min_lr_ratio at total_steps) | "constant";
                                 both after a linear warmup
    optim.ssm_lr          float|None  lr of ssm_jax.nn.SSMParam params (None: optim.lr)
    optim.ssm_weight_decay float  (0: SSM parameters are not decayed)
    optim.ssm_param_groups dict   role (dt|A|B|C|D) -> {lr, weight_decay} for the SSM
                                 parameters of that role (None: optim.lr / optim.weight_decay);
                                 unlisted roles keep ssm_lr / ssm_weight_decay
    optim.grad_accum_steps int   microbatches per step (scan over data.batch_size / n each)
    eval.splits           tuple  dataset splits evaluated every eval_every steps
    eval.batch_size       int    global eval batch
    eval.num_batches      int    batches per split (-1: the whole split)
    eval.extra            ConfigDict  name -> ConfigDict(split=..., data=ConfigDict(overrides),
                                 batch_size=..., num_batches=..., forward="parallel"|"chunked",
                                 chunk_size=...): extra evaluations, e.g. at longer lengths;
                                 run at the end of training (and every eval_every if every_eval)
    early_stop.metric     str    "<split>/<metric>" that ends training once it reaches
                                 early_stop.threshold ("max" mode: >=; "min": <=) at an
                                 evaluation; "" = never. The end-of-training evaluations run then
    checkpoint.keep       int    most recent checkpoints kept
    checkpoint.best_metric str   "<split>/<metric>" whose best checkpoint is also kept ("" = none)
    checkpoint.best_mode  str    "max" | "min"
    checkpoint.async_save bool
    progress_bar          bool   tqdm bar on process 0
    deterministic         bool   GPU: XLA's deterministic reductions (--xla_gpu_deterministic_ops,
                                 set by experiments.run before JAX starts; slower scatters), so a
                                 rerun on the same GPU kind repeats the run bit for bit. The
                                 Mamba-2 SSD kernel's backward with several heads per B/C group
                                 still sums dB/dC in arrival order. CPU/TPU are deterministic
    profile.num_steps     int    trace this many training steps with jax.profiler (0: none) into
                                 <workdir>/profile and write its per-op table there (ops.md;
                                 experiments.profiling); an evaluation inside the window is traced too
    profile.start_step    int    from the first call starting at or after this step (past the
                                 first call, which compiles)
    allow_schedule_change bool   resume although total_steps changed the lr schedule of the
                                 remaining steps (cosine decays over total_steps); False: such
                                 a resume is refused, naming the steps whose lr would change
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict

from ssm_jax import parallel

__all__ = ["DEFAULT_SHARDING_RULES", "base_config", "extra_eval", "model_config", "parse_arg", "smoke_schedule"]

# The one rules table (logical axis names on parameters, from ssm_jax.nn, and `batch`/`length`
# on activations -> mesh axes): FSDP shards the model width; tensor parallelism the expanded inner
# width, heads, MLP hidden and vocabulary; `length` goes to `context`. Dims that do not divide
# their mesh axes stay replicated.
DEFAULT_SHARDING_RULES = parallel.DEFAULT_RULES


def base_config() -> ml_collections.ConfigDict:
    """The keys every experiment has, with neutral defaults (unlocked; lock after filling)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 1000
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 500
    c.steps_per_call = 1
    c.progress_bar = True
    c.deterministic = False
    c.allow_schedule_change = False

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, context=1))
    c.sharding_rules = DEFAULT_SHARDING_RULES

    c.model = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict(dict(name="", batch_size=32))

    c.optim = ml_collections.ConfigDict(
        dict(
            lr=1e-3,
            ssm_lr=config_dict.placeholder(float),
            schedule="cosine",
            warmup_steps=100,
            min_lr_ratio=0.0,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=0.1,
            ssm_weight_decay=0.0,
            ssm_param_groups=ml_collections.ConfigDict(),
            clip_norm=1.0,
            grad_accum_steps=1,
        )
    )

    c.eval = ml_collections.ConfigDict(
        dict(splits=("validation",), batch_size=32, num_batches=-1, extra=ml_collections.ConfigDict())
    )

    c.early_stop = ml_collections.ConfigDict(dict(metric="", threshold=0.0, mode="max"))
    c.profile = ml_collections.ConfigDict(dict(start_step=0, num_steps=0))

    c.checkpoint = ml_collections.ConfigDict(
        dict(keep=2, best_metric="validation/accuracy", best_mode="max", async_save=True)
    )
    return c


def extra_eval(
    *,
    split: str = "test",
    data: dict[str, Any] | None = None,
    batch_size: int = 1,
    num_batches: int = 1,
    forward: str = "parallel",
    chunk_size: int = 4096,
    every_eval: bool = False,
) -> ml_collections.ConfigDict:
    """One entry of ``config.eval.extra``: evaluate ``split`` with ``data`` overriding ``config.data``.

    ``forward="chunked"`` runs the model over the sequence ``chunk_size`` tokens at a time,
    carrying the recurrent state, so lengths far beyond training (2^20) fit in memory.
    """
    if forward not in ("parallel", "chunked"):
        raise ValueError(f"extra_eval: forward must be 'parallel' or 'chunked'; got {forward!r}")
    return ml_collections.ConfigDict(
        dict(
            split=split,
            data=ml_collections.ConfigDict(data or {}),
            batch_size=batch_size,
            num_batches=num_batches,
            forward=forward,
            chunk_size=chunk_size,
            every_eval=every_eval,
        )
    )


def smoke_schedule(c: ml_collections.ConfigDict, steps: int = 4) -> None:
    """Shrink the schedule to a few steps for a CPU smoke run (in place)."""
    c.total_steps = steps
    c.log_every = 1
    c.eval_every = steps
    c.checkpoint_every = steps
    c.optim.warmup_steps = 1
    c.eval.num_batches = 1


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parse a config module's ``arg`` (``"mixer=mamba,smoke"``) against typed ``defaults``.

    A bare name sets a bool default to True (``smoke`` == ``smoke=True``). Values are cast to the
    type of their default; unknown names raise ValueError listing the valid ones.
    """
    out = ml_collections.ConfigDict(defaults)
    if not arg:
        return out
    for item in arg.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        if name not in defaults:
            raise ValueError(f"config arg {name!r} is not one of {sorted(defaults)} (arg={arg!r})")
        default = defaults[name]
        if not sep:
            if not isinstance(default, bool):
                raise ValueError(f"config arg {name!r} needs a value ({name}=...); got {arg!r}")
            out[name] = True
            continue
        try:
            out[name] = cast_like(default, value)
        except ValueError:
            if isinstance(default, bool):
                raise ValueError(f"config arg {name!r} is a bool; got {value!r}") from None
            raise ValueError(f"config arg {name!r} takes {type(default).__name__} values (default "
                             f"{default!r}); got {value!r} (arg={arg!r})") from None
    return out


def cast_like(default: Any, text: str) -> Any:
    """``text`` as a value of ``default``'s type: a bool from true / false / 1 / 0, anything else
    by its type's constructor. Raises ValueError when ``text`` is no such value."""
    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"not a bool: {text!r}")
        return text.lower() in ("true", "1")
    return type(default)(text)


def plus_list(a: ml_collections.ConfigDict, name: str, cast: type = str) -> list:
    """The ``+``-separated values of the parsed config arg ``a[name]`` (``"64+128"``), each cast by
    ``cast``: a sweep's axis. A value that does not cast, or no value, raises ValueError naming the arg."""
    items = [v.strip() for v in str(a[name]).split("+") if v.strip()]
    try:
        values = [cast(v) for v in items]
    except ValueError:
        values = []
    if not values:
        raise ValueError(f"config arg {name!r} takes '+'-separated {cast.__name__} values; got {a[name]!r}")
    return values


def model_config(kind: str, *, mixer: str, **fields: Any) -> ml_collections.ConfigDict:
    """``config.model`` for ``kind`` "lm" (LanguageModelConfig) or "classifier" (SequenceClassifierConfig).

    Every top-level field is spelled out, and the sub-config of each mixer in use (``mixer``, or
    ``layer_mixers``) with all its fields, so any of them can be overridden on the command line
    (``--config.model.mamba.d_state=32``). ``fields`` override the defaults; a mixer's entry may be
    a dict of its fields to change. Checked against the dataclass now, so a bad config fails at
    load time.
    """
    import dataclasses

    from ssm_jax.models import config as model_configs

    cls = {"lm": model_configs.LanguageModelConfig, "classifier": model_configs.SequenceClassifierConfig}.get(kind)
    if cls is None:
        raise ValueError(f"model_config: kind must be 'lm' or 'classifier'; got {kind!r}")
    mixers = set(fields.get("layer_mixers") or (mixer,))
    out: dict[str, Any] = {"mixer": mixer}
    for f in dataclasses.fields(cls):
        if f.name == "mixer":
            continue
        has_default = f.default is not dataclasses.MISSING
        if f.name in model_configs.MIXERS:
            if f.name in mixers:
                sub = dict(f.default.to_dict())
                unknown = set(fields.get(f.name, {})) - set(sub)
                if unknown:
                    raise ValueError(f"model_config: unknown {f.name} field(s) {sorted(unknown)}; valid: {sorted(sub)}")
                sub.update(fields.get(f.name, {}))
                out[f.name] = sub
            elif f.name in fields:
                raise ValueError(f"model_config: fields for mixer {f.name!r}, which no layer uses ({sorted(mixers)})")
        elif f.name in fields:
            out[f.name] = fields[f.name]
        elif has_default:
            out[f.name] = f.default
    unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"model_config: unknown field(s) {sorted(unknown)} for {cls.__name__}")
    cls.from_dict(out)  # validate now
    return ml_collections.ConfigDict(out)
