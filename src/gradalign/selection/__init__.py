"""Selection methods behind one registry: name -> scorer; generic top-n / uniform selectors."""

from .base import Candidates, Method, Scored, SelectionOptions, select
from .registry import REGISTRY, get_method, register

__all__ = ["Candidates", "Method", "Scored", "SelectionOptions", "select", "REGISTRY", "get_method", "register"]
