r"""The demo (``make demo``): a small Mamba learns selective copying on a CPU in a few minutes.

Selective copying (Mamba paper, Sec. 4.1.1) shrunk to run on a laptop: sequences of 64 tokens
hide 4 data tokens (6 possible values) among noise; after 4 marker tokens the model must output
the data tokens in order. A time-invariant model (S4/S4D) cannot select by content; Mamba's
input-dependent dt, B, C can. 2 Mamba layers, d_model 32.

    make demo      # = python -m experiments.run --config=experiments/configs/synthetic/demo.py --workdir=runs/demo

Expected: about 2-3 minutes on a 2-core CPU; held-out token accuracy >= 90% (``validation/accuracy``).
arg ``smoke``: 4 steps, seconds. The paper-scale task is ``selective_copying.py``.
"""

from experiments.configs import common


def get_config(arg=None):
    a = common.parse_arg(arg, smoke=False)
    c = common.base_config()
    c.seed = 0
    c.total_steps = 1000
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 500

    c.data = dict(name="selective_copying", batch_size=32, seq_len=64, vocab_size=8, num_tokens=4, eval_examples=512)
    c.model = common.model_config("lm", mixer="mamba", vocab_size=8, d_model=32, n_layers=2, mamba=dict(d_state=16, expand=2))
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 50
    c.optim.weight_decay = 0.1
    c.eval.batch_size = 128
    c.checkpoint.best_metric = "validation/accuracy"

    if a.smoke:
        c.data.update(dict(batch_size=8, eval_examples=16))
        c.eval.batch_size = 8
        common.smoke_schedule(c)
    return c.lock()
