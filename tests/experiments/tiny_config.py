"""Config of the runner's infrastructure tests: TinyLM (tests/experiments/tiny_model.py) on a
tiny selective-copying task; 6 steps, everything logged each step, checkpoints every 3.

The learning rate is constant, so a run's first steps do not depend on ``total_steps``: runs of
different lengths can be compared step for step."""

import ml_collections

from experiments.configs import common


def get_config(arg=None):
    a = common.parse_arg(arg, dropout=0.0, accum=1)
    c = common.base_config()
    c.total_steps = 6
    c.log_every = 1
    c.eval_every = 3
    c.checkpoint_every = 3
    c.progress_bar = False
    c.model = ml_collections.ConfigDict(dict(vocab_size=8, d_model=16, dropout=a.dropout))
    c.data = dict(name="selective_copying", batch_size=8, seq_len=16, vocab_size=8, num_tokens=3, eval_examples=12)
    c.optim.lr = 3e-2
    c.optim.warmup_steps = 0
    c.optim.min_lr_ratio = 1.0
    c.optim.grad_accum_steps = a.accum
    c.eval.batch_size = 8
    # Batch 3 divides no mesh of several devices: evaluated replicated (every process reads it all).
    c.eval.extra.odd_batch = common.extra_eval(split="test", data=dict(eval_examples=7), batch_size=3, num_batches=-1)
    c.checkpoint.keep = 5
    c.checkpoint.async_save = True
    return c.lock()
