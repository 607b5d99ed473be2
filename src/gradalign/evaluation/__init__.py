"""Held-out accuracy of a policy (pass@1 greedy or mean@k sampled), with per-source breakdowns."""

from .accuracy import evaluate

__all__ = ["evaluate"]
