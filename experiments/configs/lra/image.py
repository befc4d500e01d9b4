r"""LRA Image: CIFAR-10 classes from grayscale pixel sequences (10 classes, length 1,024).

Data: ``data=release`` reads ``cifar-10-batches-py`` under ``--config.data.manual_dir``;
``data=tfds`` reads TFDS ``cifar10``. Train 45k / validation 5k / test 10k.

    python -m experiments.run --config=experiments/configs/lra/image.py:mixer=mamba2 \
      --workdir=runs/lra/image/mamba2 --config.data.manual_dir=/path/to/lra

arg: ``mixer=`` (default s4), ``data=``, ``smoke`` (:func:`base.lra_config`).

Hyperparameters of S4 and S4D: state-spaces/s4 ``configs/experiment/lra/s4-cifar.yaml``
(:data:`base.S4_PUBLISHED`): 6 layers of width 512, post-norm BatchNorm, dropout 0.1, d_state 64,
batch 50, lr 0.01 (SSM 0.001), 180k steps; mean pooling over the valid positions, no gradient
clipping. Pixels enter as real numbers (``Normalize(122.6/255, 61/255)``, a linear encoder),
softplus dt, A/B/P tied over the channels (``n_ssm`` 1), dropout masks tied along the sequence,
dt/A/B/P/C at the SSM rate. What that recipe has and we cannot express yet is listed in ``base.py``.
Mamba, Mamba-2 and Hydra keep the same depth, width, batch and schedule with their own pre-norm
RMSNorm blocks (see ``base.py``).

Expected test accuracy (%, published): S4 88.65, S4D-LegS 88.19, S5 88.00.
Mamba, Mamba-2 and Hydra: no published LRA numbers to compare with.
"""

from experiments.configs.lra import base



def get_config(arg=None):
    return base.lra_config("image", arg)
