"""Datasets for the experiments, looked up by name through :mod:`experiments.data.registry`.

Importing a data module registers its datasets. The table below lets ``registry.get(name)``
import the right module on first use, so neither the trainer nor a notebook has to import data
modules by hand. A data module that registers a new dataset adds its name here.
"""

from experiments.data import registry

_MODULES = {
    "experiments.data.synthetic": ("selective_copying", "induction_heads", "mqar"),
    "experiments.data.lra": (
        "lra_listops", "lra_text", "lra_retrieval", "lra_image", "lra_pathfinder32",
        "lra_pathfinder64", "lra_pathfinder128", "lra_pathfinder256", "lra_pathx",
    ),
    "experiments.data.text": ("text",),
    "experiments.data.random_tokens": ("random_classification", "random_retrieval"),
}

for _module, _names in _MODULES.items():
    for _name in _names:
        registry.register_lazy(_name, _module)
