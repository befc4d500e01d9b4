r"""Induction heads (Mamba paper, Sec. 4.1.2, Table 2 / Fig. 3): recall the token after a trigger.

    python -m experiments.run \
      --config=experiments/configs/synthetic/induction_heads.py:mixer=mamba \
      --workdir=runs/induction_heads/mamba

arg: ``mixer=`` mamba | mamba2 | s4 | s4d | attention (default mamba); ``max_log2_len=`` longest
test length as a power of 2 (default 20); ``smoke``: length 16, 4 steps, tests at 2^4 and 2^6.

Where each setting comes from:

* Task (Sec. 4.1.2; the format is H3's ``synthetics.py``, which the paper cites): vocabulary 16,
  of which token 15 is the trigger and 0..14 are random; the trigger appears once at a uniform
  random position followed by the answer token, and again as the last input; the model outputs
  the answer there. Loss and accuracy on that last position only (training on every position, as
  H3 does, leaves a Mamba near chance: state-spaces/mamba#298).
* Trained at length 256 on fresh random data every step; tested at 2^6 ... 2^20 on fixed sets
  per length (64 sequences up to 2^14, 8 beyond). Lengths above 4096 run ``forward="chunked"``:
  batch 1, the sequence fed 4096 tokens at a time through the model's recurrent cache
  (``prefill``), so length 2^20 needs the memory of length 4096.
* Model (App. E.1): 2 layers, d_model 64, the default Mamba block (d_state 16, expand 2); no MLP
  and no positional information (a positional embedding breaks extrapolation).
* Optimizer (App. E.1): Adam (weight decay 0), constant learning rate 1e-3 (of the paper's 2e-4
  and 1e-3, the one Mamba extrapolated better with), batch 8, 25 epochs of 8192 steps = 204,800
  steps; no warmup or clipping is mentioned, so there is none. The recipe this replaced (AdamW
  wd 0.1, warmup + cosine, 50K steps) trained to 100% at 256 but fell to 76.6% at 2^10 and 7.8%
  at 2^14; which of its differences cost the extrapolation was not isolated.

Expected (paper): Mamba 100% at every test length up to 2^20; attention variants fall below 60%
beyond 2^9 - 2^10, H3 and Hyena below 45% beyond 2^10. Reported as ``len_<L>/accuracy``.
Attention at 2^20 needs a 2^20-long KV cache: lower ``max_log2_len`` for it.

Measured (one H200, seed 0, 2026-12-02, the committed config): Mamba 100% at every length 2^6 ...
2^20 (100% on training sequences from ~12K steps); Mamba-2 100% to 2^12, 98.4% at 2^13, then
73-88% to 2^15 and 12-50% beyond; S4D at chance (9%); attention (4 heads, RoPE) 81% at 256, 50%
at 512, 28% at 1024, 6-12% beyond. ``docs/reproductions.md`` has the runs and the plot.

    python -m experiments.sweep --config=experiments/configs/synthetic/induction_heads.py \
      --workdir=runs/induction_heads --parallel=4     # the four mixers (get_sweep)
"""

from experiments.configs import common
from experiments.configs.synthetic import mixers


def get_config(arg=None):
    a = common.parse_arg(arg, mixer="mamba", max_log2_len=20, smoke=False)
    mixers.check(a.mixer, "induction_heads")
    c = common.base_config()
    c.total_steps = 25 * 8192
    c.log_every = 1024
    c.eval_every = 8192
    c.checkpoint_every = 8192
    c.steps_per_call = 256

    c.data = dict(name="induction_heads", batch_size=8, seq_len=256, vocab_size=16, eval_examples=512, num_threads=0)
    c.model = common.model_config("lm", mixer=a.mixer, vocab_size=16, d_model=64, n_layers=2, **mixers.SMALL[a.mixer])
    mixers.paper_optimizer(c, lr=1e-3)
    c.eval.batch_size = 64
    c.checkpoint.best_metric = "validation/accuracy"

    log2_lengths = range(6, a.max_log2_len + 1)
    if a.smoke:
        c.data.update(dict(seq_len=16, eval_examples=8))
        c.eval.batch_size = 8
        mixers.shrink_model(c, a.mixer)
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


def get_sweep(arg=None):
    """Every mixer of the paper's table, one run each (``arg``: ``mixers=a+b``, ``seeds=0+1+2``)."""
    return mixers.mixer_sweep(arg, mixers="mamba+mamba2+s4d+attention", args={"attention": "max_log2_len=14"})
