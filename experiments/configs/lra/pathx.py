r"""LRA Path-X: Pathfinder at 128x128 (sequences of 16,384 pixels), hard level.

Data: ``data=release`` reads ``lra_release/pathfinder128/curv_contour_length_14`` under
``--config.data.manual_dir``; ``data=generated`` builds 160k/20k/20k images with our generator
(slow: ~0.1-0.3 s per image per core).

    python -m experiments.run --config=experiments/configs/lra/pathx.py:mixer=s4 \
      --workdir=runs/lra/pathx/s4 --config.data.manual_dir=/path/to/lra

arg: ``mixer=`` (default s4), ``data=``, ``smoke`` (:func:`base.lra_config`).

Hyperparameters of S4 and S4D: state-spaces/s4 ``configs/experiment/lra/s4-pathx.yaml``
(:data:`base.S4_PUBLISHED`): 6 layers of width 256, pre-norm BatchNorm, no dropout, d_state 64,
dt_min 1e-4, batch 16, lr 0.001 (SSM 0.001), 500k steps; mean pooling over the valid positions, no
gradient clipping. Pixels enter as real numbers (``Normalize(0.5, 0.5)``, a linear encoder),
softplus dt, one SSM per channel, dt/A/B/P/C at the SSM rate. What that recipe has and we cannot
express yet is listed in ``base.py``. Mamba, Mamba-2 and Hydra keep the same depth, width, batch and
schedule with their own pre-norm RMSNorm blocks (see ``base.py``).

Expected test accuracy (%, published): S4 96.35, S4D-LegS 91.95, S5 98.58.
Mamba, Mamba-2 and Hydra: no published LRA numbers to compare with.
"""

from experiments.configs.lra import base



def get_config(arg=None):
    return base.lra_config("pathx", arg)
