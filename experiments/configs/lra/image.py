r"""LRA Image: CIFAR-10 classes from grayscale pixel sequences (10 classes, length 1,024).

Data: ``data=release`` reads ``cifar-10-batches-py`` under ``--config.data.manual_dir``;
``data=tfds`` reads TFDS ``cifar10``. Train 45k / validation 5k / test 10k.

    python -m experiments.run --config=experiments/configs/lra/image.py:mixer=mamba2 \
      --workdir=runs/lra/image/mamba2 --config.data.manual_dir=/path/to/lra

arg: ``mixer=`` s4 | s4d | mamba | mamba2 | hydra (default s4); ``data=`` the builder config;
``smoke`` runs 4 steps of a 1-layer model in seconds, on our generated / placeholder data unless
``data=`` names another builder config, prepared in ``<workdir>/lra_data``.

Hyperparameters: the updated S4 recipe (state-spaces/s4 ``s4-*.yaml``, :data:`base.S4_PUBLISHED`)
for S4 and S4D; the same backbone and schedule for the other mixers (see ``base.py``).

Expected test accuracy (%, published): S4 88.65, S4D-LegS 88.19, S5 88.00.
Mamba, Mamba-2 and Hydra: no published LRA numbers to compare with.
"""

from experiments.configs.lra import base



def get_config(arg=None):
    return base.lra_config("image", arg)
