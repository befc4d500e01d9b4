"""What every LRA config shares: the published hyperparameters and the config builder.

One module per task (``listops.py``, ``text.py``, ``retrieval.py``, ``image.py``,
``pathfinder.py``, ``pathx.py``) calls :func:`lra_config` with the mixer from its ``:arg``::

    python -m experiments.run --config=experiments/configs/lra/listops.py:mixer=s4 \\
      --workdir=runs/lra/listops/s4 --config.data.manual_dir=/data/lra

Hyperparameters. S4 and S4D use the updated S4 recipes, :data:`S4_PUBLISHED` (the S4D paper
trains S4D-LegS with the same ones). Where each setting comes from, in state-spaces/s4:

* ``configs/experiment/lra/s4-{listops,imdb,aan,cifar,pathfinder,pathx}.yaml`` (``model.*``,
  ``loader.batch_size``, ``optimizer.*``, ``scheduler.*``, ``trainer.max_epochs``): depth
  ``model.n_layers``, width ``model.d_model``, ``model.norm`` (BatchNorm on every task),
  ``model.prenorm`` (post-norm on ListOps and Image, pre-norm elsewhere), dropout
  ``model.dropout``, state size ``model.layer.d_state``, ``dt_min``/``dt_max``, the SSM
  parameters' learning rate ``model.layer.lr``, batch size, AdamW ``lr`` and ``weight_decay``,
  cosine schedule length and warmup, epochs. Bidirectional kernels (``layer.bidirectional``),
  HiPPO-LegS init (``layer.init: legs``).
* ``decoder.mode: pool`` there and in ``configs/pipeline/*.yaml`` (``use_lengths`` on the token
  tasks): mean pooling over the valid positions -> our ``pooling="mean"`` with the padding mask.
* ``configs/model/base.yaml`` / ``configs/model/layer/s4.yaml`` defaults: GELU activation and
  a GLU output linear in each S4 layer (``activation``, ``final_act``; our ``S4Config``
  defaults), ``norm`` eps 1e-5 and BatchNorm1d's momentum (``torch.nn.BatchNorm1d`` defaults).
* ``configs/trainer/default.yaml``: ``gradient_clip_val: null`` -> ``optim.clip_norm = 0``
  (no clipping); ``configs/config.yaml``: no weight decay on biases and norm parameters
  (ours: decay on matrices, and on S4's ``D`` vector, below).
* ``configs/model/layer/s4.yaml``: ``dt_transform: softplus`` -> ``dt_transform="softplus"``;
  ``n_ssm: 1`` (A, B, P tied across channels; dt, C, D per channel), kept by ListOps, Text,
  Retrieval and Image, ``n_ssm: null`` (one SSM per channel) on Pathfinder and Path-X.

Post-norm has no final norm (state-spaces/s4's ``SequenceModel``): see
:class:`ssm_jax.models.SequenceClassifierConfig`. Our BatchNorm leaves padding out of its
statistics; state-spaces/s4's ``nn.BatchNorm1d`` counts padded positions (it has no mask).

Followed through our own mechanisms, or not expressible yet (each not-followed item a difference
from the published runs):

* hyperparameters per SSM parameter (``Kernel.register`` in ``src/models/sequence/kernels``)
  are followed (:func:`s4_param_groups`, ``optim.ssm_param_groups``): ListOps, Text and Retrieval
  (``layer.lr: {dt: null, A: 0.001, B: 0.001}``) train A, B, P at 0.001 and dt, C at the global
  lr; Image, Pathfinder and Path-X (``layer.lr: 0.001``) train dt, A, B, P and C at 0.001; dt, A,
  B, P have no weight decay, C and D the optimizer's (D, a vector, through ``decay_vectors``:
  otherwise our weight decay applies to matrices only);
* ``model.tie_dropout: true`` (Image, the one task with dropout): one dropout mask per channel
  for the whole sequence, in the S4 layers and the residual branches -> ``tie_dropout=True``;
* the pixel tasks' real-valued inputs (S4/S4D: ``encoder="linear"``, :data:`S4_PIXEL_NORM`).

The S5 settings (lindermanlab/S5 ``bin/run_experiments/run_lra_*.sh``) are listed in
:data:`S5_PUBLISHED` for reference. Mamba, Mamba-2 and Hydra have no published LRA recipe; their
configs keep the task's S4 backbone (depth, width, batch, schedule, learning rates) and the
mixers' default state sizes, so they are comparisons at equal depth and width, not tuned results.
The S4 block design (``norm``, ``prenorm``) and the unclipped gradients are S4's and apply to
S4/S4D only; the other mixers keep their own pre-norm RMSNorm blocks and global-norm clipping at 1.

Inputs: ListOps' 16-id vocabulary, bytes (257 ids) for Text and Retrieval, pixel values (256
ids) for Image and Pathfinder. S4 and S4D read the pixel ids as normalized real numbers through a
linear encoder, as state-spaces/s4 (and S5) do; Mamba, Mamba-2 and Hydra embed them (LRA's
tokenized setting).
"""

from __future__ import annotations

from experiments.configs import common

MIXERS = ("s4", "s4d", "mamba", "mamba2", "hydra")

# state-spaces/s4 configs/experiment/lra/s4-<file>.yaml, one entry per task (`file` names it).
S4_PUBLISHED = {
    "listops": dict(file="listops", n_layers=6, d_model=256, norm="batch", prenorm=False, d_state=4, dt_min=1e-3,
                    dt_max=0.1, dropout=0.0, batch_size=32, lr=0.01, ssm_lr=1e-3, ssm_lr_roles=("A", "B"),
                    weight_decay=0.05, total_steps=120_000, warmup_steps=12_000, epochs=40, n_ssm=1),
    "text": dict(file="imdb", n_layers=6, d_model=256, norm="batch", prenorm=True, d_state=4, dt_min=1e-3, dt_max=0.1,
                 dropout=0.0, batch_size=16, lr=0.01, ssm_lr=1e-3, ssm_lr_roles=("A", "B"), weight_decay=0.05, total_steps=50_000,
                 warmup_steps=5_000, epochs=32, n_ssm=1),
    "retrieval": dict(file="aan", n_layers=6, d_model=256, norm="batch", prenorm=True, d_state=4, dt_min=1e-3,
                      dt_max=0.1, dropout=0.0, batch_size=64, lr=0.01, ssm_lr=1e-3, ssm_lr_roles=("A", "B"),
                      weight_decay=0.05, total_steps=50_000, warmup_steps=5_000, epochs=20, n_ssm=1),
    "image": dict(file="cifar", n_layers=6, d_model=512, norm="batch", prenorm=False, d_state=64, dt_min=1e-3,
                  dt_max=0.1, dropout=0.1, batch_size=50, lr=0.01, ssm_lr=1e-3, ssm_lr_roles=("dt", "A", "B", "C"), weight_decay=0.05,
                  total_steps=180_000, warmup_steps=18_000, epochs=200, n_ssm=1, tie_dropout=True),
    "pathfinder": dict(file="pathfinder", n_layers=6, d_model=256, norm="batch", prenorm=True, d_state=64, dt_min=1e-3,
                       dt_max=0.1, dropout=0.0, batch_size=64, lr=0.004, ssm_lr=1e-3, ssm_lr_roles=("dt", "A", "B", "C"),
                       weight_decay=0.05,
                       total_steps=500_000, warmup_steps=50_000, epochs=200, n_ssm=None),
    "pathx": dict(file="pathx", n_layers=6, d_model=256, norm="batch", prenorm=True, d_state=64, dt_min=1e-4,
                  dt_max=0.1, dropout=0.0, batch_size=16, lr=0.001, ssm_lr=1e-3, ssm_lr_roles=("dt", "A", "B", "C"), weight_decay=0.05,
                  total_steps=500_000, warmup_steps=50_000, epochs=50, n_ssm=None),
}
# Every recipe: decoder.mode pool (configs/experiment/lra/s4-*.yaml, configs/pipeline/*.yaml) and
# no gradient clipping (configs/trainer/default.yaml, gradient_clip_val: null).
S4_POOLING = "mean"


def s4_param_groups(p: dict) -> dict:
    """``optim.ssm_param_groups`` of an S4/S4D recipe: state-spaces/s4's ``Kernel.register`` gives
    ``layer.lr`` to the roles it names (``ssm_lr_roles``: a dict ``{dt: null, A: .., B: ..}`` names A
    and B; a number names dt, A, B and C), the global lr to the rest; no weight decay on dt, A, B
    (and P, with A), the optimizer's on C and D (``FFTConv.D`` is a plain parameter, decayed
    although it is a vector: ``decay_vectors``)."""
    return {role: dict(lr=p["ssm_lr"] if role in p["ssm_lr_roles"] else None,
                       weight_decay=0.0 if role in ("dt", "A", "B") else None,
                       **({"decay_vectors": True} if role == "D" else {}))
            for role in ("dt", "A", "B", "C", "D")}
S4_CLIP_NORM = 0.0

# lindermanlab/S5 bin/run_experiments/run_lra_*.sh (global lr = lr_factor * ssm_lr_base).
S5_PUBLISHED = {
    "listops": "8 layers, H=128, P=16, J=8 blocks, batch 50, 40 epochs, lr 3e-3, ssm lr 1e-3, wd 0.04",
    "text": "6 layers, H=256, P=192, J=12, batch 50, 35 epochs, lr 4e-3, ssm lr 1e-3, wd 0.07, dropout 0.1",
    "retrieval": "6 layers, H=128, P=256, J=16, batch 32, 20 epochs, lr 2e-3, ssm lr 1e-3, wd 0.05",
    "image": "6 layers, H=512, P=384, J=3, batch 50, 250 epochs, lr 4.5e-3, ssm lr 1e-3, wd 0.07, dropout 0.1",
    "pathfinder": "6 layers, H=192, P=256, J=8, batch 64, 200 epochs, lr 4.5e-3, ssm lr 9e-4, wd 0.03, dropout 0.05",
    "pathx": "6 layers, H=128, P=256, J=16, batch 32, 75 epochs, lr 1.8e-3, ssm lr 6e-4, wd 0.06, dt_min 1e-4",
}

# Test accuracy (%) the papers report (S4 as updated in the S4D paper; S4D-LegS; S5).
ACCURACY = {
    "listops": dict(s4=59.60, s4d=60.47, s5=62.15),
    "text": dict(s4=86.82, s4d=86.18, s5=89.31),
    "retrieval": dict(s4=90.90, s4d=89.46, s5=91.40),
    "image": dict(s4=88.65, s4d=88.19, s5=88.00),
    "pathfinder": dict(s4=94.20, s4d=93.06, s5=95.33),
    "pathx": dict(s4=96.35, s4d=91.95, s5=98.58),
}

# state-spaces/s4 models/s4/experiments.md, the table "to help reproduce results and sanity
# check" of its S4 runs with these recipes: approximate final accuracy (%), the accuracy reached
# by an epoch (``at_epoch`` = (epoch, %)), and minutes per epoch on the GPU it names.
S4_REPO_NOTES = {
    "listops": dict(final=59.5, at_epoch=(10, 50.0), epoch_minutes=15.0, device="T4"),
    "text": dict(final=86.5, at_epoch=(10, 80.0), epoch_minutes=17.0, device="T4"),
    "retrieval": dict(final=91.0, at_epoch=(10, 80.0), epoch_minutes=23.0, device="A100"),
    "image": dict(final=88.5, at_epoch=(20, 80.0), epoch_minutes=2.0, device="A100"),
    "pathfinder": dict(final=94.0, at_epoch=(20, 90.0), epoch_minutes=7.0, device="A100"),
    "pathx": dict(final=96.0, at_epoch=(10, 92.0), epoch_minutes=56.0, device="A100"),
}

# Registered dataset of each task.
DATASETS = {
    "listops": "lra_listops",
    "text": "lra_text",
    "retrieval": "lra_retrieval",
    "image": "lra_image",
    "pathfinder": "lra_pathfinder32",
    "pathx": "lra_pathx",
}

# Our data that stands in for the release in smoke runs unless `data=` names another builder
# config: generators where the task is generated, random examples in the right format elsewhere.
_SMOKE_DATA = {"listops": "generated", "pathfinder": "generated", "pathx": "generated"}
# Smoke runs prepare their (small) datasets inside the run's workdir: the trainer replaces
# "{workdir}" in data.* strings, so nothing is written to a shared fixed path.
SMOKE_DATA_DIR = "{workdir}/lra_data"


def mixer_fields(mixer: str, p: dict, *, smoke: bool = False) -> dict:
    """The ``model_config`` keyword for ``mixer``'s sub-config on a task with settings ``p``."""
    if mixer in ("s4", "s4d"):
        sub = dict(d_state=4 if smoke else p["d_state"], dt_min=p["dt_min"], dt_max=p["dt_max"],
                   bidirectional=True, dropout=p["dropout"], lr=p["ssm_lr"], dt_transform="softplus",
                   n_ssm=p["n_ssm"], tie_dropout=p.get("tie_dropout", False))
        if mixer == "s4d":
            sub["init"] = "legs"
        return {mixer: sub}
    if mixer == "mamba":
        return {"mamba": dict(d_state=4 if smoke else 16, expand=2, dt_min=p["dt_min"], dt_max=p["dt_max"])}
    if mixer in ("mamba2", "hydra"):
        sub = dict(d_state=8 if smoke else 64, headdim=8 if smoke else 64, expand=2, chunk_size=16 if smoke else 256,
                   dt_min=p["dt_min"], dt_max=p["dt_max"])
        return {mixer: sub}
    raise ValueError(f"LRA configs: mixer must be one of {MIXERS}; got {mixer!r}")


def block_fields(mixer: str, p: dict) -> dict:
    """The ``model_config`` keywords of the residual blocks: S4's ``norm``/``prenorm`` and
    ``tie_dropout`` for S4 and S4D; nothing (pre-norm RMSNorm, the model default) for the others."""
    if mixer not in ("s4", "s4d"):
        return {}
    return dict(norm=p["norm"], prenorm=p["prenorm"], tie_dropout=p.get("tie_dropout", False))


# state-spaces/s4 feeds the pixel tasks as real numbers: src/dataloaders/lra.py (Pathfinder,
# Path-X: ToTensor then Normalize(0.5, 0.5)) and src/dataloaders/vision.py (grayscale CIFAR:
# Normalize(122.6 / 255, 61.0 / 255)), through the model's Linear(1, d_model) encoder.
S4_PIXEL_NORM = {"image": (122.6 / 255.0, 61.0 / 255.0), "pathfinder": (0.5, 0.5), "pathx": (0.5, 0.5)}


def encoder_fields(mixer: str, task: str) -> dict:
    """The ``model_config`` keywords of the input encoder: S4/S4D read the pixel tasks' ids as
    normalized intensities through a linear encoder (:data:`S4_PIXEL_NORM`); everything else
    embeds ids."""
    if mixer not in ("s4", "s4d") or task not in S4_PIXEL_NORM:
        return {}
    mean, std = S4_PIXEL_NORM[task]
    return dict(encoder="linear", pixel_mean=mean, pixel_std=std)


def steps_per_epoch(task: str) -> int:
    """Training steps of one epoch of ``task``'s recipe (its schedule length over its epochs, at
    its batch size: ListOps 120,000 / 40 = 3,000 steps of 32 = the 96,000 training examples)."""
    p = S4_PUBLISHED[task]
    return max(1, p["total_steps"] // p["epochs"])


def task_of_dataset(name: str) -> str | None:
    """The LRA task whose registered dataset is ``name`` (``lra_listops`` -> ``listops``), else None
    (e.g. Pathfinder at a size other than 32)."""
    return {v: k for k, v in DATASETS.items()}.get(name)


def docstring_results(task: str) -> str:
    a = ACCURACY[task]
    return f"S4 {a['s4']:.2f}, S4D-LegS {a['s4d']:.2f}, S5 {a['s5']:.2f}"


def lra_config(task: str, arg: str | None, *, dataset=None, **extra_args):
    """The config of LRA ``task`` for the arguments in ``arg`` (the text after the config's ``:``).

    ``mixer=`` s4 | s4d | mamba | mamba2 | hydra (default s4). ``data=`` the TFDS builder config
    (default ``release``; with ``smoke``, our generated or placeholder data); a name the builder
    does not have is refused here. ``smoke`` runs 4 steps of a 1-layer model in seconds, its data
    prepared in ``<workdir>/lra_data``. ``extra_args`` are a task's own args with their defaults
    (Pathfinder's ``size=32``), parsed with the rest; ``dataset`` is the registered dataset, or a
    function of the parsed args giving it (default :data:`DATASETS`).
    """
    a = common.parse_arg(arg, mixer="s4", smoke=False, data="", **extra_args)
    if a.mixer not in MIXERS:
        raise ValueError(f"lra/{task}: mixer must be one of {MIXERS}; got {a.mixer!r}")
    from experiments.data.lra import BUILDERS, TASK_INFO  # the vocabulary / classes / length of the dataset

    dataset = dataset(a) if callable(dataset) else dataset or DATASETS[task]
    info = TASK_INFO[dataset]
    builder_configs = {b.name: b for b in BUILDERS[dataset].BUILDER_CONFIGS}
    data = a.data or (_SMOKE_DATA.get(task, "placeholder") if a.smoke else "release")
    if data not in builder_configs:
        raise ValueError(f"lra/{task}: data must be one of {sorted(builder_configs)} (the configs of the {dataset} "
                         f"TFDS builder); got {a.data!r}")
    p = S4_PUBLISHED[task]

    c = common.base_config()
    c.seed = 0
    c.total_steps = p["total_steps"]
    c.log_every = 100
    c.eval_every = steps_per_epoch(task)
    c.checkpoint_every = steps_per_epoch(task)

    c.data = dict(
        name=dataset,
        batch_size=p["batch_size"],
        tfds_config=data,
        data_dir="",
        manual_dir="",
        seq_len=info["seq_len"],
        num_examples=(),
        num_threads=4,
    )
    c.model = common.model_config(
        "classifier",
        mixer=a.mixer,
        vocab_size=info["vocab_size"],
        num_classes=info["num_classes"],
        d_model=p["d_model"],
        n_layers=p["n_layers"],
        pooling=S4_POOLING,
        dual_encoder=task == "retrieval",
        dropout=p["dropout"],
        **block_fields(a.mixer, p),
        **mixer_fields(a.mixer, p),
        **encoder_fields(a.mixer, task),
    )
    if a.mixer in ("s4", "s4d"):
        c.optim.clip_norm = S4_CLIP_NORM
    c.optim.lr = p["lr"]
    c.optim.ssm_lr = p["ssm_lr"]
    c.optim.weight_decay = p["weight_decay"]
    if a.mixer in ("s4", "s4d"):
        c.optim.ssm_param_groups = s4_param_groups(p)
    c.optim.ssm_weight_decay = 0.0
    c.optim.warmup_steps = p["warmup_steps"]
    c.optim.min_lr_ratio = 0.0
    c.eval.splits = ("validation", "test")
    c.eval.batch_size = p["batch_size"]
    c.eval.num_batches = -1
    c.checkpoint.best_metric = "validation/accuracy"
    c.checkpoint.best_mode = "max"

    if a.smoke:
        c.data.update(
            dict(batch_size=4, seq_len=min(info["seq_len"], 256), tfds_config=data, data_dir=SMOKE_DATA_DIR,
                 num_examples=(8, 4, 4) if getattr(builder_configs[data], "generated", False) else (), num_threads=1)
        )
        c.eval.batch_size = 4
        small = dict(p, d_model=16, n_layers=1)
        c.model = common.model_config(
            "classifier", mixer=a.mixer, vocab_size=info["vocab_size"], num_classes=info["num_classes"],
            d_model=16, n_layers=1, pooling=S4_POOLING, dual_encoder=task == "retrieval", dropout=0.0,
            **block_fields(a.mixer, small), **mixer_fields(a.mixer, small, smoke=True),
        )
        common.smoke_schedule(c)
    return c.lock()
