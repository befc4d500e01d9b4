r"""LRA Retrieval: do two ACL papers cite each other? (2 classes, two byte sequences of 4,000, dual encoder).

Data: ``data=release`` reads ``lra_release/tsv_data/new_aan_pairs.*.tsv`` under
``--config.data.manual_dir``.

    python -m experiments.run --config=experiments/configs/lra/retrieval.py:mixer=hydra \
      --workdir=runs/lra/retrieval/hydra --config.data.manual_dir=/path/to/lra

arg: ``mixer=`` s4 | s4d | mamba | mamba2 | hydra (default s4); ``data=`` the builder config;
``smoke`` runs 4 steps of a 1-layer model in seconds, on our generated / placeholder data unless
``data=`` names another builder config, prepared in ``<workdir>/lra_data``.

Hyperparameters: the updated S4 recipe (state-spaces/s4 ``s4-*.yaml``, :data:`base.S4_PUBLISHED`)
for S4 and S4D; the same backbone and schedule for the other mixers (see ``base.py``).

Expected test accuracy (%, published): S4 90.90, S4D-LegS 89.46, S5 91.40.
Mamba, Mamba-2 and Hydra: no published LRA numbers to compare with.
"""

from experiments.configs.lra import base



def get_config(arg=None):
    return base.lra_config("retrieval", arg)
