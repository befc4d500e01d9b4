r"""Selective copying (Mamba paper, Sec. 4.1.1, Table 1): copy 16 tokens scattered in noise.

Task (paper setup): length 4096, vocabulary 16 (noise, marker and 14 data tokens), 16 tokens to
copy; 2 layers, d_model 64. The optimizer schedule and step count are ours.

    python -m experiments.run \
      --config=experiments/configs/synthetic/selective_copying.py:mixer=mamba \
      --workdir=runs/selective_copying/mamba

arg: ``mixer=`` mamba | mamba2 | s4 | s4d | attention (default mamba); ``smoke`` shrinks
everything to a CPU run of a few seconds (length 32, 4 tokens, 4 steps).

Expected (paper, token accuracy on the copied tokens): Mamba (S6 in a Mamba block) 99.8%;
S4 without gating 18.3%, H3 57.0%, Hyena 30.1%. Time-invariant S4/S4D cannot select by content
and stay far below Mamba. Reported here as ``validation/accuracy`` (per token) and
``validation/seq_accuracy`` (all 16 right).

Runtime (measured, mixer=mamba, one H100, fp32 or ``--config.model.dtype=bfloat16``): about 85
steps/s at batch 64 x 4096 tokens, so the 100k steps take about 20 minutes.
"""

from experiments.configs import common
from experiments.configs.synthetic import mixers


def get_config(arg=None):
    a = common.parse_arg(arg, mixer="mamba", smoke=False)
    mixers.check(a.mixer, "selective_copying")
    c = common.base_config()
    c.seed = 0
    c.total_steps = 100_000
    c.log_every = 200
    c.eval_every = 5_000
    c.checkpoint_every = 5_000

    c.data = dict(name="selective_copying", batch_size=64, seq_len=4096, vocab_size=16, num_tokens=16, eval_examples=1024)
    c.model = common.model_config("lm", mixer=a.mixer, vocab_size=16, d_model=64, n_layers=2, **mixers.SMALL[a.mixer])
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 1_000
    c.optim.weight_decay = 0.1
    c.eval.batch_size = 64
    c.checkpoint.best_metric = "validation/accuracy"

    if a.smoke:
        c.data.update(dict(batch_size=8, seq_len=32, num_tokens=4, eval_examples=8))
        c.eval.batch_size = 8
        c.model.d_model = 16
        common.smoke_schedule(c)
    return c.lock()
