"""Scoring a subset of the parameters (`score_parameters`): a cheaper, approximate score for large policies.

Every backend scores "the gradient" of whatever parameters require a gradient. `scoring_scope(model, patterns)`
narrows that, for the duration of a `with` block, to the parameter *uses* whose names match one of `patterns`:

  * a glob over module-qualified parameter names (fnmatch), e.g. `lm_head.*`, `*.lora_*`, `model.norm.weight`;
    a tied weight has one name per module using it (`model.embed_tokens.weight` and `lm_head.weight`), and each
    use is matched on its own;
  * `last_blocks:K`: every parameter of the last K blocks of the model's decoder stack (its longest ModuleList).

Parameters with no scored use are frozen inside the block, so the backward stops at the first scored module:
scoring the last quarter of the blocks costs a forward, a quarter of a backward and a quarter of the reductions.
A tied embedding whose head is scored but whose embedding use is not gives the head's part of the gradient only
(the embedding's output is detached, so nothing flows back through the blocks that are not scored). Validation
directions computed inside the same block live in the same subspace, so cosines stay consistent.

This is an approximation of the full-gradient score; what it costs and how
close (Spearman, top-k overlap, corrupted share of the selection) on a real round: `gradalign bench subset`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
import weakref
from dataclasses import dataclass

from torch import nn

from ..distributed import fsdp_sharded

LAST_BLOCKS = re.compile(r"last_blocks:(?P<k>[1-9][0-9]*)")
_EXCLUDED: "weakref.WeakKeyDictionary[nn.Module, frozenset[str]]" = weakref.WeakKeyDictionary()


class ScopeError(ValueError):
    """`score_parameters` that cannot be used; `detail` is the message without the field's name (the config and
    the run name the field themselves)."""

    def __init__(self, detail: str):
        self.detail = detail
        super().__init__(f"score_parameters: {detail}")


def excluded_uses(module: nn.Module) -> frozenset[str]:
    """Names of `module`'s own trainable parameters whose use in it is left out of the current scoring scope."""
    return _EXCLUDED.get(module, frozenset())


def check_patterns(patterns: list[str]) -> None:
    """A ScopeError naming the first malformed pattern (empty, or `last_blocks:` without a positive count)."""
    for p in patterns:
        if not isinstance(p, str) or not p.strip():
            raise ScopeError(f"every pattern must be a non-empty string (got {p!r})")
        if p.startswith("last_blocks") and not LAST_BLOCKS.fullmatch(p):
            raise ScopeError(f"'{p}' must be last_blocks:K with K >= 1 (e.g. last_blocks:8)")


def decoder_blocks(model: nn.Module) -> list[str]:
    """Module names of the model's decoder blocks, in order: the children of its longest ModuleList."""
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise ScopeError("last_blocks:K needs a model whose blocks are an nn.ModuleList (model.layers in "
                         "transformers' decoders); name the parameters with globs instead")
    name, blocks = max(lists, key=lambda item: len(item[1]))
    return [f"{name}.{i}" if name else str(i) for i in range(len(blocks))]


def _globs(model: nn.Module, patterns: list[str]) -> list[str]:
    """The patterns as globs, `last_blocks:K` expanded to its blocks' prefixes."""
    out = []
    for p in patterns:
        match = LAST_BLOCKS.fullmatch(p)
        out += [f"{b}.*" for b in decoder_blocks(model)[-int(match["k"]):]] if match else [p]
    return out


def parameter_uses(model: nn.Module):
    """(module, its local parameter name, the qualified name, the parameter) of every trainable parameter use;
    a tied weight appears once per module holding it."""
    for mname, module in model.named_modules(remove_duplicate=False):
        for local, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                yield module, local, f"{mname}.{local}" if mname else local, p


@dataclass
class Scope:
    """What `patterns` mean for one model: the parameters scored, those frozen while scoring, and the uses of a
    scored (tied) parameter that are left out, by module."""

    scored: list[nn.Parameter]
    frozen: list[nn.Parameter]
    excluded: dict[nn.Module, frozenset[str]]


def resolve(model: nn.Module, patterns: list[str]) -> Scope:
    """The scope `patterns` give on `model`; ScopeError if nothing matches, or if a tied weight's use left out is
    not an embedding's (its output could not be cut off from the loss)."""
    check_patterns(patterns)
    globs = _globs(model, patterns)
    uses = list(parameter_uses(model))
    matched = {(module, local) for module, local, name, _ in uses if any(fnmatch.fnmatchcase(name, g) for g in globs)}
    if not matched:
        examples = [name for _, _, name, _ in uses][-3:]
        raise ScopeError(f"{patterns} matched no trainable parameter (names look like: {', '.join(examples)})")
    scored = {id(p): p for module, local, _, p in uses if (module, local) in matched}
    excluded: dict[nn.Module, set[str]] = {}
    for module, local, name, p in uses:
        if id(p) in scored and (module, local) not in matched:  # a tied weight's use left out
            if not isinstance(module, nn.Embedding):
                raise ScopeError(f"{name} is tied to a scored parameter; leaving out a tied weight's use is "
                                 f"supported for an embedding only (score the head, not the embedding), so match "
                                 f"{name} too or neither")
            excluded.setdefault(module, set()).add(local)
    frozen = [p for p in {id(p): p for _, _, _, p in uses}.values() if id(p) not in scored]
    return Scope(list(scored.values()), frozen, {m: frozenset(n) for m, n in excluded.items()})


def _detach_output(module, inputs, output):
    return output.detach()


@contextlib.contextmanager
def scoring_scope(model: nn.Module, patterns: list[str] | None):
    """Inside the block, only the parameter uses matching `patterns` are scored (module docstring); no patterns:
    the whole model, unchanged. Everything is restored on exit, also after an error."""
    if not patterns:
        yield model
        return
    if fsdp_sharded(model):
        raise ScopeError("cannot narrow an FSDP-sharded model's scoring (its parameters are flattened shards); "
                         "score the whole model, or a LoRA adapter")
    scope = resolve(model, patterns)
    handles = []
    try:
        for p in scope.frozen:
            p.requires_grad_(False)
        for module, names in scope.excluded.items():
            _EXCLUDED[module] = names
            handles.append(module.register_forward_hook(_detach_output))  # the backward ends at the head's input
        yield model
    finally:
        for h in handles:
            h.remove()
        for module in scope.excluded:
            _EXCLUDED.pop(module, None)
        for p in scope.frozen:
            p.requires_grad_(True)
