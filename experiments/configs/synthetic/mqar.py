r"""Multi-query associative recall (Zoology, Arora et al. 2023; the grid of Based, Fig. 2).

    python -m experiments.run \
      --config=experiments/configs/synthetic/mqar.py:mixer=mamba2,d_model=128 \
      --workdir=runs/mqar/mamba2_d128 --config.optim.lr=3.2e-3
    python -m experiments.sweep --config=experiments/configs/synthetic/mqar.py --workdir=runs/mqar

arg: ``mixer=`` mamba | mamba2 | s4 | s4d | attention (default mamba2); ``d_model=`` (default
128); ``smoke``: vocabulary 64, lengths <= 32, 4 steps. :func:`get_sweep` is the published grid
(mixers attention / Mamba / Mamba-2 x d_model 64, 128, 256 x 4 learning rates), run by
``experiments.sweep``.

Where each setting comes from (``zoology/experiments/paper_configs/arxiv24_based_figure2``,
``zoology/data/multiquery_ar.py``, ``zoology/train.py``):

* Data: vocabulary 8192; train on (length, pairs) = (64, 4), (128, 8), (256, 16), (256, 32),
  (256, 64), with 100K, 20K, 20K, 20K, 20K examples an epoch (``train_weights``); test 1000
  sequences each of (64, 4), (64, 8), (64, 16), (128, 32), (256, 64), (512, 128), (1024, 256).
  Keys from [1, 4096), values from [4096, 8192); queries at power-law gaps (a = 0.01) among
  random tokens; only the queries are scored.
* Model: 2 layers, no MLP. Mamba / Mamba-2 at d_state 16 (the middle of Based's 8 / 16 / 24;
  the same state per channel, so the two compare at equal state size), Mamba-2 with head dim 64
  (mamba_ssm's default). Attention: one head, as Zoology's ``MHA(num_heads=1)``; ours applies
  RoPE where Zoology puts a short convolution before attention (Zoology's models also use
  dropout 0.1, ours none).
* Optimizer: AdamW, weight decay 0.1, cosine decay over the run, batch 256, 32 epochs of the
  180K-example train mix (22,500 steps), learning rates logspace(-3, -1.5, 4) = 1e-3, 3.2e-3,
  1e-2, 3.2e-2 (Based Fig. 2's sweep). Zoology stops a run once validation accuracy reaches
  0.99 (``early_stop``); our validation set is 1280 sequences of the train mix (Zoology
  validates on the test settings).

Expected (Zoology / Based, accuracy vs width): attention solves every setting at every width;
gated-convolution and time-invariant SSMs (S4/S4D) fall well short as pairs grow; Mamba-2
beats Mamba-1 at equal state size. Reported per test setting as ``L<len>_kv<pairs>/accuracy``.
SSMs solve recall only in a narrow band of learning rates, so read the sweep's best and its
spread. Measured runs: ``docs/reproductions.md``.

Measured (seed 0, one H100, 2026-12-06/08; ``docs/reproductions.md``): the d_model 64 slice is
complete. Attention solved every training setting (test 96.6-99.7% up to (256, 64)) in 500-1,500
steps at lr 1e-3 / 3.2e-3 / 1e-2 and did not learn at 3.2e-2; at d_model 128 and 256 likewise
(96.4-99.9%, 500-8,000 steps) where it trains. At (256, 64), best over the four rates: Mamba-2
91.8% (62.0-91.8% across the rates), Mamba 77.2% (0.1-77.2%: nothing at 1e-3 and 3.2e-2), so
Mamba-2 beats Mamba at equal state size at every rate. At d_model 128 (the two middle rates run to
the end; at 3.2e-2 Mamba did not learn; Mamba-2's outer rates and Mamba's 1e-3 cut off): both
reach 98.1% at (256, 64) (Mamba at 1e-2, Mamba-2 at 3.2e-3, at its 99% validation stop), and
Mamba-2 leads past the training lengths ((512, 128): 81.3 / 74.7% against 45.6 / 56.6% at 3.2e-3 /
1e-2). At d_model 256 (middle rates finished, outer ones cut off): Mamba-2 98.4% at (256, 64)
(3.2e-3, early stop at 17,000 steps) against Mamba's 87.2% (3.2e-3; at 1e-2 Mamba sat at chance
for 17,000 steps and ended at 31.0%); at (1024, 256) Mamba 45.4% against Mamba-2's 36.4%.
"""

import itertools

from experiments.configs import common
from experiments.configs.synthetic import mixers

TRAIN_SETTINGS = ((64, 4), (128, 8), (256, 16), (256, 32), (256, 64))
TRAIN_EXAMPLES = (100_000, 20_000, 20_000, 20_000, 20_000)  # per epoch, per setting
TEST_SETTINGS = ((64, 4), (64, 8), (64, 16), (128, 32), (256, 64), (512, 128), (1024, 256))
BATCH_SIZE = 256
EPOCHS = 32
LEARNING_RATES = (1e-3, 3.2e-3, 1e-2, 3.2e-2)
MIXER_SETTINGS = {
    "mamba": dict(mamba=dict(d_state=16, expand=2)),
    "mamba2": dict(mamba2=dict(d_state=16, headdim=64, expand=2, chunk_size=64)),
    "attention": dict(attention=dict(num_heads=1)),
}


def get_config(arg=None):
    a = common.parse_arg(arg, mixer="mamba2", d_model=128, smoke=False)
    mixers.check(a.mixer, "mqar")
    c = common.base_config()
    steps_per_epoch = sum(TRAIN_EXAMPLES) // BATCH_SIZE
    c.total_steps = EPOCHS * steps_per_epoch
    c.log_every = 100
    c.eval_every = 500
    c.checkpoint_every = 2_500
    c.steps_per_call = 20

    c.data = dict(
        name="mqar",
        batch_size=BATCH_SIZE,
        vocab_size=8192,
        train_settings=TRAIN_SETTINGS,
        train_weights=TRAIN_EXAMPLES,
        eval_settings=TRAIN_SETTINGS,
        eval_examples=1280,
        power_a=0.01,
        random_non_queries=True,
        num_threads=0,  # grain reader threads; 0: one per four CPU cores (1-4)
    )
    sub = MIXER_SETTINGS.get(a.mixer, mixers.SMALL[a.mixer])
    c.model = common.model_config("lm", mixer=a.mixer, vocab_size=8192, d_model=a.d_model, n_layers=2, **sub)
    c.optim.lr = 3.2e-3
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 0.1
    c.eval.batch_size = 128
    c.early_stop.metric = "validation/accuracy"
    c.early_stop.threshold = 0.99
    c.checkpoint.best_metric = "validation/accuracy"

    test_settings = TEST_SETTINGS
    if a.smoke:
        c.data.update(dict(vocab_size=64, train_settings=((16, 2), (32, 4)), train_weights=(1, 1),
                           eval_settings=((16, 2), (32, 4)), eval_examples=8))
        c.model.vocab_size = 64
        mixers.shrink_model(c, a.mixer)
        c.eval.batch_size = 8
        common.smoke_schedule(c)
        test_settings = ((32, 8),)
    for length, pairs in test_settings:
        c.eval.extra[f"L{length}_kv{pairs}"] = common.extra_eval(
            split="test", data=dict(eval_settings=((length, pairs),), eval_examples=1000 if not a.smoke else 8),
            batch_size=c.eval.batch_size if length <= 256 else 32, num_batches=-1,
        )
    return c.lock()


def get_sweep(arg=None):
    """The published grid: ``[(name, config arg, overrides), ...]`` for ``experiments.sweep``.

    ``arg``: ``mixers=`` (``+``-separated, default attention+mamba+mamba2), ``widths=`` (default
    64+128+256), ``lrs=`` (default the four of Based Fig. 2), ``seeds=`` (default 0).
    """
    a = common.parse_arg(arg, mixers="attention+mamba+mamba2", widths="64+128+256",
                         lrs="+".join(f"{lr:g}" for lr in LEARNING_RATES), seeds="0")
    names = common.plus_list(a, "mixers")
    for mixer in names:
        mixers.check(mixer, "mqar")
    out = []
    # Width-major: a sweep cut off by its time limit leaves whole widths (every mixer) done.
    for width, mixer, lr, seed in itertools.product(
        common.plus_list(a, "widths", int), names, common.plus_list(a, "lrs", float), common.plus_list(a, "seeds", int),
    ):
        name = f"{mixer}_d{width}_lr{lr:g}_s{seed}"
        out.append((name, f"mixer={mixer},d_model={width}", {"optim.lr": lr, "seed": seed}))
    return out
