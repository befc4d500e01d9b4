r"""LRA Retrieval: do two ACL papers cite each other? (2 classes, two byte sequences of 4,000, dual encoder).

Data: ``data=release`` reads ``lra_release/tsv_data/new_aan_pairs.*.tsv`` under
``--config.data.manual_dir``.

    python -m experiments.run --config=experiments/configs/lra/retrieval.py:mixer=hydra \
      --workdir=runs/lra/retrieval/hydra --config.data.manual_dir=/path/to/lra

arg: ``mixer=`` (default s4), ``data=``, ``smoke`` (:func:`base.lra_config`).

Hyperparameters of S4 and S4D: state-spaces/s4 ``configs/experiment/lra/s4-aan.yaml``
(:data:`base.S4_PUBLISHED`): 6 layers of width 256, pre-norm BatchNorm, no dropout, d_state 4, batch
64 pairs encoded as one batch of 128 documents, lr 0.01 (SSM 0.001), 50k steps; mean pooling over
the valid positions, no gradient clipping. Softplus dt, A/B/P tied over the channels (``n_ssm`` 1),
A/B/P at the SSM rate and dt/C at the global one. What that recipe has and we cannot express yet is
listed in ``base.py``. Mamba, Mamba-2 and Hydra keep the same depth, width, batch and schedule with
their own pre-norm RMSNorm blocks (see ``base.py``).

Expected test accuracy (%, published): S4 90.90, S4D-LegS 89.46, S5 91.40.
Mamba, Mamba-2 and Hydra: no published LRA numbers to compare with.
"""

from experiments.configs.lra import base



def get_config(arg=None):
    return base.lra_config("retrieval", arg)
