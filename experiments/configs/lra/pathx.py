r"""LRA Path-X: Pathfinder at 128x128 (sequences of 16,384 pixels), hard level.

Data: ``data=release`` reads ``lra_release/pathfinder128/curv_contour_length_14`` under
``--config.data.manual_dir``; ``data=generated`` builds 160k/20k/20k images with our generator
(slow: ~0.1-0.3 s per image per core).

    python -m experiments.run --config=experiments/configs/lra/pathx.py:mixer=s4 \
      --workdir=runs/lra/pathx/s4 --config.data.manual_dir=/path/to/lra

arg: ``mixer=`` s4 | s4d | mamba | mamba2 | hydra (default s4); ``data=`` the builder config;
``smoke`` runs 4 steps of a 1-layer model in seconds, on our generated / placeholder data unless
``data=`` names another builder config, prepared in ``<workdir>/lra_data``.

Hyperparameters: the updated S4 recipe (state-spaces/s4 ``s4-*.yaml``, :data:`base.S4_PUBLISHED`)
for S4 and S4D; the same backbone and schedule for the other mixers (see ``base.py``).

Expected test accuracy (%, published): S4 96.35, S4D-LegS 91.95, S5 98.58.
Mamba, Mamba-2 and Hydra: no published LRA numbers to compare with.
"""

from experiments.configs.lra import base



def get_config(arg=None):
    return base.lra_config("pathx", arg)
