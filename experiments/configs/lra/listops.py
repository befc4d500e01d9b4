r"""LRA ListOps: evaluate nested MAX/MIN/MED/SM expressions (10 classes, length <= 2,000).

Data: ``data=release`` reads ``lra_release/listops-1000/basic_*.tsv`` under
``--config.data.manual_dir``; ``data=generated`` builds 96k/2k/2k examples from our generator (same
procedure, different draws).

    python -m experiments.run --config=experiments/configs/lra/listops.py:mixer=s4 \
      --workdir=runs/lra/listops/s4 --config.data.manual_dir=/path/to/lra

arg: ``mixer=`` (default s4), ``data=``, ``smoke`` (:func:`base.lra_config`).

Hyperparameters of S4 and S4D: state-spaces/s4 ``configs/experiment/lra/s4-listops.yaml``
(:data:`base.S4_PUBLISHED`): 6 layers of width 256, BatchNorm after each residual addition
(post-norm, so no final norm), no dropout, d_state 4, batch 32, lr 0.01 (SSM 0.001), 120k steps;
mean pooling over the valid positions, no gradient clipping. Softplus dt, A/B/P tied over the
channels (``n_ssm`` 1), A/B/P at the SSM rate and dt/C at the global one. What that recipe has and
we cannot express yet is listed in ``base.py``. Mamba, Mamba-2 and Hydra keep the same depth, width,
batch and schedule with their own pre-norm RMSNorm blocks (see ``base.py``).

Expected test accuracy (%, published): S4 59.60, S4D-LegS 60.47, S5 62.15.
Mamba, Mamba-2 and Hydra: no published LRA numbers to compare with.
"""

from experiments.configs.lra import base



def get_config(arg=None):
    return base.lra_config("listops", arg)
