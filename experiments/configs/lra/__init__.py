"""Long Range Arena configs: one module per task, the mixer as ``:arg`` (see base.py)."""
