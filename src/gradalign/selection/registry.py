"""One registry: method name -> `Method`. The curriculum loop only ever looks methods up here."""

from __future__ import annotations

from . import baselines, cropi, gradalign, learnalign
from .base import Method

REGISTRY: dict[str, Method] = {m.name: m for m in gradalign.METHODS + learnalign.METHODS + cropi.METHODS + baselines.METHODS}


def get_method(name: str) -> Method:
    if name not in REGISTRY:
        raise ValueError(f"unknown method '{name}' (choose from: {', '.join(REGISTRY)})")
    return REGISTRY[name]


def register(method: Method) -> None:
    """Add a method (later modules: LearnAlign, CROPI; or a user's own)."""
    REGISTRY[method.name] = method
