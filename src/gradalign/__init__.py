"""gradalign: choose the training problems of LLM RL with verifiable rewards.

GradAlign (gradient alignment with a trusted validation set, re-scored every round), baselines, and the
curriculum loop that trains with TRL's GRPOTrainer.
"""

from .config import RunConfig
from .data.problem import DataError, Problem

__all__ = ["RunConfig", "Problem", "DataError", "Curriculum", "GradAlignGRPOTrainer"]
__version__ = "0.1.0"


def __getattr__(name):
    # The heavy imports (torch, transformers, TRL) happen only when these are used.
    if name == "Curriculum":
        from .curriculum.loop import Curriculum
        return Curriculum
    if name == "GradAlignGRPOTrainer":
        from .curriculum.trl_selection import GradAlignGRPOTrainer
        return GradAlignGRPOTrainer
    raise AttributeError(name)
