r"""The demo (``make demo``): a small Mamba learns induction heads on a CPU in a few minutes.

Induction heads (Mamba paper, Sec. 4.1.2) shrunk to run on a laptop: a sequence of 32 random
tokens (vocabulary 16) contains a trigger token followed by an answer token; the sequence ends
with the trigger again, and the model must output the answer. It is associative recall, the
skill behind in-context learning: the model has to store the token that followed the trigger
and retrieve it when the trigger recurs. 2 Mamba layers, d_model 32, 400 steps of batch 64.

    make demo      # = python -m experiments.run --config=experiments/configs/synthetic/demo.py --workdir=runs/demo

Expected: 1-2 minutes on a 2-core CPU (measured with jax 0.11.2: 1 min 47 s on 2 dedicated
cores, 1 min 0 s on a shared 2-core machine; 6 min 17 s on one busy with heavier jobs); held-out
accuracy (``validation/accuracy``) 100% (measured for seeds 0-6: every seed reached 100%
by step 300). arg ``smoke``: 4 steps, seconds.

The paper-scale task, with the length-generalization tests, is ``induction_heads.py`` (trained at
length 256). Trained at length 32 as here, the model does not reliably extrapolate: tested at
length 4096 (``forward="chunked"``), 2 of 7 seeds kept >= 90%, the rest fell to 12-25%.
"""

from experiments.configs import common


def get_config(arg=None):
    a = common.parse_arg(arg, smoke=False)
    c = common.base_config()
    c.seed = 0
    c.total_steps = 400
    c.log_every = 25
    c.eval_every = 100
    c.checkpoint_every = 200

    c.data = dict(name="induction_heads", batch_size=64, seq_len=32, vocab_size=16, eval_examples=512)
    c.model = common.model_config("lm", mixer="mamba", vocab_size=16, d_model=32, n_layers=2, mamba=dict(d_state=16, expand=2))
    c.optim.lr = 1e-2
    c.optim.warmup_steps = 50
    c.optim.weight_decay = 0.1
    c.eval.batch_size = 128
    c.checkpoint.best_metric = "validation/accuracy"

    if a.smoke:
        c.data.update(dict(batch_size=8, eval_examples=16))
        c.eval.batch_size = 8
        common.smoke_schedule(c)
    return c.lock()
