"""Runnable lab scenarios (``python -m netns_lab.scenarios.<name>``), used by scripts/demo."""
