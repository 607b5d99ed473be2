"""GradAlign and its gradient-based variants (METHODS.md §1): scores from per-problem policy gradients."""

from __future__ import annotations

import numpy as np

from .base import Candidates, Method, Scored, SelectionOptions, gradient_eligibility, zero_where_zero_variance

GRADIENTS = frozenset({"gradients", "validation"})


def _gradient_score(values: np.ndarray, c: Candidates, opts: SelectionOptions) -> Scored:
    return Scored(zero_where_zero_variance(values, c), gradient_eligibility(c, opts))


def gradalign(c: Candidates, opts: SelectionOptions) -> Scored:
    return _gradient_score(c.cos_val, c, opts)


def gradalign_dot(c: Candidates, opts: SelectionOptions) -> Scored:
    return _gradient_score(c.dot_val, c, opts)


def negalign(c: Candidates, opts: SelectionOptions) -> Scored:
    return _gradient_score(-c.cos_val, c, opts)


def norm(c: Candidates, opts: SelectionOptions) -> Scored:
    return _gradient_score(c.norm, c, opts)


def selfalign(c: Candidates, opts: SelectionOptions) -> Scored:
    return _gradient_score(c.cos_self, c, opts)


def align_x_learnability(c: Candidates, opts: SelectionOptions) -> Scored:
    return _gradient_score(c.cos_val * 4 * c.pass_rate * (1 - c.pass_rate), c, opts)


METHODS = [
    Method("gradalign", gradalign, GRADIENTS, "top by cos(g(x), g_V)"),
    Method("gradalign-dot", gradalign_dot, GRADIENTS, "top by <g(x), ĝ_V>"),
    Method("negalign", negalign, GRADIENTS, "bottom by cos(g(x), g_V) (ablation)"),
    Method("norm", norm, frozenset({"gradients"}), "top by ‖g(x)‖ (no validation set)"),
    Method("selfalign", selfalign, frozenset({"gradients", "self"}),
           "top by cos(g(x), pooled gradient of the chunk) (reference code's 'LearnAlign' baseline)"),
    Method("align-x-learnability", align_x_learnability, GRADIENTS, "cos(g(x), g_V) · 4p(1-p)"),
]
