r"""Induction heads (Mamba paper, Sec. 4.1.2, Table 2 / Fig. 3): recall the token after a trigger.

Task (paper setup): vocabulary 16, trained at length 256, tested at lengths 2^6 ... 2^20; 2 layers,
d_model 64. The test lengths far beyond training run with ``forward="chunked"``: batch 1, the
sequence fed 4096 tokens at a time through the model's recurrent cache (``prefill``), so length
2^20 needs the memory of length 4096. The optimizer schedule and step count are ours.

    python -m experiments.run \
      --config=experiments/configs/synthetic/induction_heads.py:mixer=mamba \
      --workdir=runs/induction_heads/mamba

arg: ``mixer=`` mamba | mamba2 | s4 | s4d | attention (default mamba); ``max_log2_len=`` longest
test length as a power of 2 (default 20); ``smoke``: length 16, 4 steps, tests at 2^4 and 2^6.

Expected (paper): Mamba 100% at every test length up to 2^20; attention variants fall below 60%
beyond 2^9 - 2^10, H3 and Hyena below 45% beyond 2^10. Reported as ``len_<L>/accuracy``.
Attention at 2^20 needs a 2^20-long KV cache: lower ``max_log2_len`` for it.

Runtime (measured, mixer=mamba, one H100): a 200-step run including every test length up to
2^20 took 73 s, so the tests add about a minute to each evaluation at the end.
"""

from experiments.configs import common
from experiments.configs.synthetic import mixers


def get_config(arg=None):
    a = common.parse_arg(arg, mixer="mamba", max_log2_len=20, smoke=False)
    mixers.check(a.mixer, "induction_heads")
    c = common.base_config()
    c.total_steps = 50_000
    c.log_every = 200
    c.eval_every = 2_000
    c.checkpoint_every = 5_000

    c.data = dict(name="induction_heads", batch_size=8, seq_len=256, vocab_size=16, eval_examples=512)
    c.model = common.model_config("lm", mixer=a.mixer, vocab_size=16, d_model=64, n_layers=2, **mixers.SMALL[a.mixer])
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 1_000
    c.eval.batch_size = 64
    c.checkpoint.best_metric = "validation/accuracy"

    log2_lengths = range(6, a.max_log2_len + 1)
    if a.smoke:
        c.data.update(dict(seq_len=16, eval_examples=8))
        c.eval.batch_size = 8
        c.model.d_model = 16
        common.smoke_schedule(c)
        log2_lengths = (4, 6)
    for k in log2_lengths:
        length = 2**k
        c.eval.extra[f"len_{length}"] = common.extra_eval(
            split="test",
            data=dict(seq_len=length, eval_examples=64 if length <= 2**14 else 8),
            batch_size=1 if length > 2**14 else 8,
            num_batches=-1,
            forward="chunked" if length > 4096 else "parallel",
            chunk_size=4096,
        )
    return c.lock()
