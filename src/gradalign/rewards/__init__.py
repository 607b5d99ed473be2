"""Rewards: verifiers and the problem-level reward (never imports torch)."""

from gradalign.rewards.corruption import ProblemReward
from gradalign.rewards.verifiers import ExactMatch, MathVerify, Verifier, get_verifier

__all__ = ["Verifier", "ExactMatch", "MathVerify", "get_verifier", "ProblemReward"]
