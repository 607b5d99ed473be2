"""The built-in tiny policy: a character-level tokenizer and a small Qwen2 causal LM built from a config.

Nothing is downloaded: the tokenizer is assembled from the task alphabet with `tokenizers`, and the model is a
`Qwen2ForCausalLM` initialised from a seed. It behaves like any Hugging Face model to TRL and to our code.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

# Everything the arithmetic tasks can print, plus a few spare symbols so user tasks in the same terse format work.
ALPHABET = list("0123456789+-*/=()., ?:abcdefghijklmnopqrstuvwxyz")
SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>"]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character; BOS prepended; left padding (what TRL's generation expects)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL + ALPHABET)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
    )
    # Chat prompts (verl layout) render to the same tokens as the plain prompt: BOS + the messages' text.
    tok.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    return tok


def tiny_config(tokenizer: PreTrainedTokenizerFast, hidden: int = 128, layers: int = 4, heads: int = 4,
                intermediate: int = 384, tie_word_embeddings: bool = True) -> Qwen2Config:
    """About 0.7M parameters at the defaults: big enough to learn 2-digit arithmetic, small enough for 2 CPU cores."""
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=64,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )


def build_tiny_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **config_kw) -> Qwen2ForCausalLM:
    """A freshly initialised tiny Qwen2 policy (deterministic given `seed`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(tiny_config(tokenizer, **config_kw))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model
