r"""Selective copying (Mamba paper, Sec. 4.1.1, Table 1): copy 16 tokens scattered in noise.

    python -m experiments.run \
      --config=experiments/configs/synthetic/selective_copying.py:mixer=mamba \
      --workdir=runs/selective_copying/mamba

arg: ``mixer=`` mamba | mamba2 | s4 | s4d | attention (default mamba); ``smoke`` shrinks
everything to a CPU run of a few seconds (length 32, 4 tokens, 4 steps).

Where each setting comes from:

* Task (Sec. 4.1.1, App. E.1): length 4096, vocabulary 16 (noise 0, marker 15, data 1..14), 16
  tokens to memorize. The authors did not release this task's code; the generator follows the S4
  repository's ``copying.py`` with ``variable=True``: data tokens at sorted random positions
  among noise, then 16 markers; at the i-th marker the model outputs the i-th data token.
  ``seq_len`` counts every input token (4080 noise/data + 16 markers).
* Loss and accuracy on the 16 marker positions only (S4's ``SequenceDecoder(mode="last")``).
* Model (App. E.1): 2 layers, d_model 64, the default Mamba block (d_state 16, expand 2, conv 4,
  dt in [1e-3, 1e-1]); no MLP, no positional information. Compute in bf16 with fp32 parameters
  (mamba_ssm's mixed precision; ours, the paper does not say).
* Optimizer (App. E.1): Adam (AdamW with weight decay 0), constant learning rate 1e-4, batch 64,
  400K steps; no warmup, weight decay or clipping is mentioned, so there is none. The learning
  rate matters: training first sits on a plateau at chance (loss ln 14); at 1e-4 it left it
  after ~9K steps, at 1e-3 it had not after 11K (weight decay 0) or 24K steps (cosine, wd 0.1).

Expected (paper, token accuracy on the copied tokens): Mamba (S6 in a Mamba block) 99.8%;
S4 without gating 18.3%, H3 57.0%, Hyena 30.1%. Time-invariant S4/S4D cannot select by content
and stay far below Mamba. Reported here as ``validation/accuracy`` (per token) and
``validation/seq_accuracy`` (all 16 right).

Measured (seed 0, the config as committed, one H100, 2026-12-07; ``docs/reproductions.md`` has the
runs): mixer=mamba passed 99% at 90K of the 400K steps -- 99.34% of validation tokens (91.8% of
sequences), 12.7 min at ~127 steps/s -- on the way 14.4% at 10K, 78.9% at 40K, 97.4% at 60K,
98.9% at 80K, with loss spikes (constant rate, no clipping) at ~65K and ~92K. mixer=mamba2
stopped early at 99.85% (97.9%) after 65K steps, 8.5 min (95% already at 20K).

    python -m experiments.sweep --config=experiments/configs/synthetic/selective_copying.py \
      --workdir=runs/selective_copying        # every mixer of the table (get_sweep)
"""

from experiments.configs import common
from experiments.configs.synthetic import mixers


def get_config(arg=None):
    a = common.parse_arg(arg, mixer="mamba", smoke=False)
    mixers.check(a.mixer, "selective_copying")
    c = common.base_config()
    c.seed = 0
    c.total_steps = 400_000
    c.log_every = 1_000
    c.eval_every = 5_000
    c.checkpoint_every = 5_000
    # The paper trains the whole 400K steps; a run here stops once the validation accuracy reaches
    # 99.5% (above the >= 99% the reproduction asks, below the paper's 99.8%), to spend GPU time
    # only where the outcome is still open. Override with --config.early_stop.metric= to train on.
    c.early_stop.metric = "validation/accuracy"
    c.early_stop.threshold = 0.995
    c.steps_per_call = 20

    c.data = dict(name="selective_copying", batch_size=64, seq_len=4096, vocab_size=16, num_tokens=16, eval_examples=1024,
                  num_threads=0)
    c.model = common.model_config("lm", mixer=a.mixer, vocab_size=16, d_model=64, n_layers=2, **mixers.SMALL[a.mixer])
    # bf16 compute with fp32 parameters and residual stream (mamba_ssm's AMP recipe): the 4096-long
    # batches are the one synthetic task where the step time is the scan's, not dispatch.
    c.model.dtype = "bfloat16"
    mixers.paper_optimizer(c, lr=1e-4)
    c.eval.batch_size = 64
    c.checkpoint.best_metric = "validation/accuracy"

    if a.smoke:
        c.data.update(dict(batch_size=8, seq_len=32, num_tokens=4, eval_examples=8))
        c.eval.batch_size = 8
        mixers.shrink_model(c, a.mixer)
        c.model.dtype = "float32"
        common.smoke_schedule(c)
    return c.lock()


def get_sweep(arg=None):
    """Every mixer of the paper's table, one run each (``arg``: ``mixers=a+b``, ``seeds=0+1+2``)."""
    return mixers.mixer_sweep(arg, mixers="mamba+mamba2+s4+s4d")
