r"""Multi-query associative recall (Zoology, Arora et al. 2023): recall the values of many keys.

Task (Zoology setup): vocabulary 8192; trained on a mixture of (length, key-value pairs) =
(64, 4), (128, 8), (256, 16), (256, 32), (256, 64); tested at settings up to (1024, 256). Zoology
sweeps model width; the default here is 2 layers, d_model 128 (set ``d_model=``). The optimizer
schedule and step count are ours.

    python -m experiments.run \
      --config=experiments/configs/synthetic/mqar.py:mixer=mamba2,d_model=128 \
      --workdir=runs/mqar/mamba2_d128

arg: ``mixer=`` mamba | mamba2 | s4 | s4d | attention (default mamba2); ``d_model=`` (default 128);
``smoke``: vocabulary 64, lengths <= 32, 4 steps.

Expected (Zoology, accuracy vs width): attention solves every setting at every width;
gated-convolution and time-invariant SSMs (S4/S4D) fall well short as pairs grow; Mamba-2
beats Mamba-1 at equal state size. Reported per test setting as ``L<len>_kv<pairs>/accuracy``.
"""

from experiments.configs import common
from experiments.configs.synthetic import mixers

TRAIN_SETTINGS = ((64, 4), (128, 8), (256, 16), (256, 32), (256, 64))
TEST_SETTINGS = ((64, 4), (64, 8), (64, 16), (128, 32), (256, 64), (512, 128), (1024, 256))


def get_config(arg=None):
    a = common.parse_arg(arg, mixer="mamba2", d_model=128, smoke=False)
    mixers.check(a.mixer, "mqar")
    c = common.base_config()
    c.total_steps = 20_000
    c.log_every = 200
    c.eval_every = 2_000
    c.checkpoint_every = 2_000

    c.data = dict(
        name="mqar",
        batch_size=64,
        vocab_size=8192,
        train_settings=TRAIN_SETTINGS,
        eval_settings=TRAIN_SETTINGS,
        eval_examples=1280,
        power_a=0.01,
    )
    c.model = common.model_config("lm", mixer=a.mixer, vocab_size=8192, d_model=a.d_model, n_layers=2, **mixers.SMALL[a.mixer])
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 500
    c.eval.batch_size = 64
    c.checkpoint.best_metric = "validation/accuracy"

    test_settings = TEST_SETTINGS
    if a.smoke:
        c.data.update(dict(vocab_size=64, train_settings=((16, 2), (32, 4)), eval_settings=((16, 2), (32, 4)), eval_examples=8))
        c.model.vocab_size = 64
        c.model.d_model = 16
        c.eval.batch_size = 8
        common.smoke_schedule(c)
        test_settings = ((32, 8),)
    for length, pairs in test_settings:
        c.eval.extra[f"L{length}_kv{pairs}"] = common.extra_eval(
            split="test", data=dict(eval_settings=((length, pairs),), eval_examples=256 if not a.smoke else 8),
            batch_size=c.eval.batch_size, num_batches=-1,
        )
    return c.lock()
