"""Experiment config modules: ``<suite>/<name>.py`` each define ``get_config(arg)``."""
