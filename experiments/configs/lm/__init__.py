"""Language-modeling configs (``gpt2_small.py``: ~125M-parameter stacks of each mixer)."""
