"""Tiny randomly initialised transformers models, saved as a local model directory (config,
weights, and a byte-level BPE tokenizer trained on a text), for trying sinkmoe.inspect and the
integration without downloading anything:

    python -m sinkmoe.tiny gpt_oss tiny-gpt-oss --text FILE
    python -m sinkmoe.inspect tiny-gpt-oss --text FILE
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import torch

FAMILIES = ("gpt_oss", "llama", "qwen3_next")


def tiny_config(family: str, vocab_size: int):
    from transformers import GptOssConfig, LlamaConfig, Qwen3NextConfig
    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, head_dim=16,
                  max_position_embeddings=512, initializer_range=0.1)
    if family == "gpt_oss":
        # YaRN RoPE scales from 4096 original positions by 32: keep the config consistent.
        return GptOssConfig(**dict(common, max_position_embeddings=131072), num_local_experts=4, num_experts_per_tok=2, sliding_window=32,
                            layer_types=["sliding_attention", "full_attention"] * 2,
                            architectures=["GptOssForCausalLM"])
    if family == "llama":
        return LlamaConfig(**dict(common, architectures=["LlamaForCausalLM"]))
    if family == "qwen3_next":
        return Qwen3NextConfig(**dict(common, architectures=["Qwen3NextForCausalLM"]),
                               layer_types=["linear_attention", "full_attention"] * 2,
                               linear_num_value_heads=8, linear_num_key_heads=2,
                               linear_key_head_dim=16, linear_value_head_dim=16, num_experts=4,
                               num_experts_per_tok=2, moe_intermediate_size=32,
                               shared_expert_intermediate_size=32)
    raise ValueError(f"sinkmoe.tiny: family {family!r}: one of {', '.join(FAMILIES)}")


def byte_tokenizer(text: str, vocab_size: int):
    """A byte-level BPE tokenizer trained on `text` (transformers' fast tokenizer class)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([text], vocab_size=vocab_size, special_tokens=["<s>", "<pad>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>",
                                   pad_token="<pad>")


def make(family: str, out: str, text: str, vocab_size: int = 512, seed: int = 0):
    """Saves a tiny random `family` model and its tokenizer to `out`; returns the path."""
    from transformers import AutoModelForCausalLM
    tokenizer = byte_tokenizer(text, vocab_size)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, len(tokenizer)))
    path = pathlib.Path(out)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sinkmoe.tiny", description=__doc__.split("\n")[0])
    p.add_argument("family", choices=FAMILIES)
    p.add_argument("out", help="the model directory to write")
    p.add_argument("--text", required=True, help="a UTF-8 text to train the tokenizer on")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    text = pathlib.Path(args.text).read_text(encoding="utf-8")
    print(f"wrote {make(args.family, args.out, text, seed=args.seed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
