r"""LRA Text: IMDB sentiment from bytes (2 classes, length 4,096).

Data: ``data=release`` reads the Stanford ``aclImdb`` folders under ``--config.data.manual_dir``;
``data=tfds`` reads TFDS ``imdb_reviews`` (downloaded by TFDS). Validation is IMDB's test split, as
in LRA.

    python -m experiments.run --config=experiments/configs/lra/text.py:mixer=s4d \
      --workdir=runs/lra/text/s4d --config.data.manual_dir=/path/to/lra

arg: ``mixer=`` (default s4), ``data=``, ``smoke`` (:func:`base.lra_config`).

Hyperparameters of S4 and S4D: state-spaces/s4 ``configs/experiment/lra/s4-imdb.yaml``
(:data:`base.S4_PUBLISHED`): 6 layers of width 256, BatchNorm before each mixer (pre-norm) and a
final BatchNorm, no dropout, d_state 4, batch 16, lr 0.01 (SSM 0.001), 50k steps; mean pooling over
the valid positions, no gradient clipping. Softplus dt, A/B/P tied over the channels (``n_ssm`` 1),
A/B/P at the SSM rate and dt/C at the global one. What that recipe has and we cannot express yet is
listed in ``base.py``. Mamba, Mamba-2 and Hydra keep the same depth, width, batch and schedule with
their own pre-norm RMSNorm blocks (see ``base.py``).

Expected test accuracy (%, published): S4 86.82, S4D-LegS 86.18, S5 89.31.
Mamba, Mamba-2 and Hydra: no published LRA numbers to compare with.
"""

from experiments.configs.lra import base



def get_config(arg=None):
    return base.lra_config("text", arg)
