r"""LRA Pathfinder: are the two marked dots joined by a path of dashes? (2 classes.)

The LRA task is ``size=32`` (sequences of 1,024 pixels), hard level (14-dash paths);
``size=64|128|256`` select the larger release images (Path-X is ``pathx.py``).

Data: ``data=release`` reads ``lra_release/pathfinder<size>/curv_contour_length_14`` under
``--config.data.manual_dir``; ``data=release_intermediate|release_easy`` the other difficulty
levels; ``data=generated`` builds 160k/20k/20k images with our generator.

    python -m experiments.run --config=experiments/configs/lra/pathfinder.py:mixer=s4 \
      --workdir=runs/lra/pathfinder/s4 --config.data.manual_dir=/path/to/lra

arg: ``size=`` 32 | 64 | 128 | 256 and those of :func:`base.lra_config` (``mixer=``, ``data=``, ``smoke``).

Hyperparameters of S4 and S4D: state-spaces/s4 ``configs/experiment/lra/s4-pathfinder.yaml`` (for
every size) (:data:`base.S4_PUBLISHED`): 6 layers of width 256, pre-norm BatchNorm, no dropout,
d_state 64, batch 64, lr 0.004 (SSM 0.001), 500k steps; mean pooling over the valid positions, no
gradient clipping. Pixels enter as real numbers (``Normalize(0.5, 0.5)``, a linear encoder),
softplus dt, one SSM per channel, dt/A/B/P/C at the SSM rate. What that recipe has and we cannot
express yet is listed in ``base.py``. Mamba, Mamba-2 and Hydra keep the same depth, width, batch and
schedule with their own pre-norm RMSNorm blocks (see ``base.py``).

Expected test accuracy at 32x32 (%, published): S4 94.20, S4D-LegS 93.06, S5 95.33.
Mamba, Mamba-2 and Hydra: no published LRA numbers to compare with.
"""

from experiments.configs.lra import base


SIZES = (32, 64, 128, 256)


def _dataset(a) -> str:
    if a.size not in SIZES:
        raise ValueError(f"lra/pathfinder: config arg 'size' must be one of {SIZES}; got {a.size}")
    return f"lra_pathfinder{a.size}"


def get_config(arg=None):
    return base.lra_config("pathfinder", arg, dataset=_dataset, size=32)
