"""Baseline safety-training methods for forgetbench, registered as ``baselines/<name>``.

Every module imports only forgetbench's public API (``from forgetbench import ...``); heavy
libraries (torch, trl) are imported inside functions so that ``forgetbench list`` stays light.
"""
