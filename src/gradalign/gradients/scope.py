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

from torch import nn

from ..distributed import fsdp_sharded

LAST_BLOCKS = re.compile(r"last_blocks:(?P<k>[1-9][0-9]*)")
_EXCLUDED: "weakref.WeakKeyDictionary[nn.Module, frozenset[str]]" = weakref.WeakKeyDictionary()


def excluded_uses(module: nn.Module) -> frozenset[str]:
    """Names of `module`'s own trainable parameters whose use in it is left out of the current scoring scope."""
    return _EXCLUDED.get(module, frozenset())


def check_patterns(patterns: list[str]) -> None:
    """A ValueError naming the first malformed pattern (empty, or `last_blocks:` without a positive count)."""
    for p in patterns:
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"score_parameters: every pattern must be a non-empty string (got {p!r})")
        if p.startswith("last_blocks") and not LAST_BLOCKS.fullmatch(p):
            raise ValueError(f"score_parameters: '{p}' must be last_blocks:K with K >= 1 (e.g. last_blocks:8)")


def decoder_blocks(model: nn.Module) -> list[str]:
    """Module names of the model's decoder blocks, in order: the children of its longest ModuleList."""
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise ValueError("score_parameters: last_blocks:K needs a model whose blocks are an nn.ModuleList "
                         "(model.layers in transformers' decoders); name the parameters with globs instead")
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


def resolve(model: nn.Module, patterns: list[str]) -> tuple[dict[nn.Module, set[str]], list[str]]:
    """({module: local names of its scored uses}, the qualified names scored); ValueError if nothing matches."""
    check_patterns(patterns)
    globs = _globs(model, patterns)
    scored: dict[nn.Module, set[str]] = {}
    names = []
    for module, local, name, _ in parameter_uses(model):
        if any(fnmatch.fnmatchcase(name, g) for g in globs):
            scored.setdefault(module, set()).add(local)
            names.append(name)
    if not names:
        examples = [name for _, _, name, _ in parameter_uses(model)][-3:]
        raise ValueError(f"score_parameters {patterns} matched no trainable parameter (names look like: "
                         f"{', '.join(examples)})")
    return scored, names


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
        raise ValueError("score_parameters cannot narrow an FSDP-sharded model's scoring (its parameters are "
                         "flattened shards); score the whole model, or a LoRA adapter")
    scored, _ = resolve(model, patterns)
    scored_ids = {id(p) for module, local, _, p in parameter_uses(model) if local in scored.get(module, ())}
    frozen = [p for p in {id(p): p for p in model.parameters() if p.requires_grad}.values()
              if id(p) not in scored_ids]
    handles, excluded = [], {}
    for module, local, name, p in parameter_uses(model):
        if id(p) in scored_ids and local not in scored.get(module, ()):  # a tied weight's use left out
            if not isinstance(module, nn.Embedding):
                raise ValueError(f"score_parameters: {name} is tied to a scored parameter; leaving out a tied "
                                 f"weight's use is supported for an embedding only (score the head, not the "
                                 f"embedding), so match {name} too or neither")
            excluded.setdefault(module, set()).add(local)
    try:
        for p in frozen:
            p.requires_grad_(False)
        for module, names in excluded.items():
            _EXCLUDED[module] = frozenset(names)
            handles.append(module.register_forward_hook(_detach_output))  # the backward ends at the head's input
        yield model
    finally:
        for h in handles:
            h.remove()
        for module in excluded:
            _EXCLUDED.pop(module, None)
        for p in frozen:
            p.requires_grad_(True)
