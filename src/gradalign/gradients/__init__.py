"""Per-problem policy-gradient signals behind one interface (`GradientBackend`), by name."""

from .forward import AutoGradients, ForwardGradients
from .onepass import OnePassGradients
from .persample import FuncGradients
from .projections import DenseProjector, FactoredProjector, Projector, SparseProjector, get_projector
from .signals import GradientBackend, NaiveGradients, ProblemSignals

BACKENDS: dict[str, type[GradientBackend]] = {
    "auto": AutoGradients,  # forward where a method needs dots only, onepass otherwise (default)
    "onepass": OnePassGradients,  # exact, one forward + backward per micro-batch
    "naive": NaiveGradients,  # exact, one full gradient per problem (the reference code's way)
    "func": FuncGradients,  # exact, torch.func per-problem gradients vmapped over problems
    "forward": ForwardGradients,  # exact dots only (no norms): a JVP per direction, each prompt run once
}


def get_backend(name: str, **kw) -> GradientBackend:
    if name not in BACKENDS:
        raise ValueError(f"unknown gradient backend '{name}' (choose from: {', '.join(BACKENDS)})")
    return BACKENDS[name](**kw)


__all__ = ["AutoGradients", "BACKENDS", "DenseProjector", "FactoredProjector", "ForwardGradients", "FuncGradients", "GradientBackend", "NaiveGradients",
           "OnePassGradients", "ProblemSignals", "Projector", "SparseProjector", "get_backend", "get_projector"]
