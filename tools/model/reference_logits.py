#!/usr/bin/env python3
"""Reference logits from transformers, for tests/runtime/llama_test.cpp.

  reference_logits.py model [--model DIR] [--text FILE] [--tokens 300] [--last 8] [--out DIR]
      Tokenizes the start of FILE (default: CACHE/text/austen/emma.txt) with the model's own
      tokenizer, no special tokens, keeps the first --tokens ids, runs the model in float32
      (eager attention) and writes OUT/emma300.json and OUT/emma300_logits.f32
      (OUT defaults to CACHE/reference/<model dir name>).

  reference_logits.py tiny [--out DIR]
      Builds three tiny random models that exercise what SmolLM2 does not: tiny-llama3 (llama3
      RoPE scaling, attention and MLP biases, untied lm_head, saved in shards with an index),
      tiny-qwen2 (q/k/v biases, tied embeddings) and tiny-mistral (one kv-head). Each goes to
      OUT/<name>/ (default CACHE/reference/tiny) with reference.json and reference_logits.f32
      for a fixed random id sequence.

CACHE is $KIV_CACHE or ~/.cache/kiv. The JSON holds: ids, logits_positions (the rows of the .f32
file, little-endian float32 [len(logits_positions), vocab_size]), vocab_size, argmax and
top2_margin (logit of the best token minus the second best) at every position, inv_freq_bits
(the rotary inverse frequencies as float32 bit patterns), and the versions used. Files are written
beside their final names and renamed in, so a killed run leaves no half-written reference.
"""
import argparse
import json
import os
import shutil
import struct
import sys

import torch


def cache_dir():
    return os.environ.get("KIV_CACHE") or os.path.expanduser("~/.cache/kiv")


def write_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def float_bits(t):
    return [struct.unpack("<I", struct.pack("<f", float(x)))[0] for x in t.float().tolist()]


@torch.no_grad()
def run_reference(model, ids, rows, out_dir, stem, extra):
    import transformers

    logits = model(torch.tensor([ids])).logits[0].float()  # [n, vocab]
    top2 = logits.topk(2, dim=-1).values
    info = {
        "ids": ids,
        "logits_positions": rows,
        "logits_file": stem + "_logits.f32",
        "vocab_size": logits.shape[1],
        "argmax": logits.argmax(-1).tolist(),
        "top2_margin": (top2[:, 0] - top2[:, 1]).tolist(),
        "inv_freq_bits": float_bits(model.model.rotary_emb.inv_freq),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "attn_implementation": "eager",
        "dtype": "float32",
    }
    info.update(extra)
    os.makedirs(out_dir, exist_ok=True)
    raw = logits[rows].contiguous().numpy().astype("<f4").tobytes()
    write_atomic(os.path.join(out_dir, info["logits_file"]), raw)
    write_atomic(os.path.join(out_dir, stem + ".json"), json.dumps(info).encode())
    print(f"reference_logits: wrote {os.path.join(out_dir, stem + '.json')} "
          f"({len(ids)} ids, {len(rows)} logit rows)")


def cmd_model(args):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = args.model or os.path.join(cache_dir(), "models", "SmolLM2-135M-Instruct")
    text_path = args.text or os.path.join(cache_dir(), "text", "austen", "emma.txt")
    name = os.path.basename(model_dir.rstrip("/"))
    out_dir = args.out or os.path.join(cache_dir(), "reference", name)
    with open(text_path, encoding="utf-8") as f:
        text = f.read(args.tokens * 40)  # far more characters than --tokens tokens need
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(text, add_special_tokens=False)["input_ids"][: args.tokens]
    if len(ids) < args.tokens:
        sys.exit(f"reference_logits: {text_path} gave only {len(ids)} tokens")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    rows = list(range(len(ids) - args.last, len(ids)))
    stem = f"emma{args.tokens}"
    run_reference(model, ids, rows, out_dir, stem,
                  {"model_dir": model_dir, "text_file": text_path})


def randomize(model, gen):
    # transformers' init (std 0.02, zero biases) gives near-uniform logits that test little:
    # larger weights and nonzero biases make every term matter.
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
        elif name.endswith("bias"):
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)


@torch.no_grad()
def cmd_tiny(args):
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                              Qwen2Config, Qwen2ForCausalLM)

    out_root = args.out or os.path.join(cache_dir(), "reference", "tiny")
    shape = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 head_dim=16, vocab_size=256, max_position_embeddings=512, rms_norm_eps=1e-5)
    models = {
        "tiny-llama3": (LlamaForCausalLM, LlamaConfig(
            **shape, num_key_value_heads=2, attention_bias=True, mlp_bias=True,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 64}), "20KB"),
        "tiny-qwen2": (Qwen2ForCausalLM, Qwen2Config(
            **shape, num_key_value_heads=2, tie_word_embeddings=True, use_sliding_window=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}), None),
        "tiny-mistral": (MistralForCausalLM, MistralConfig(
            **shape, num_key_value_heads=1, sliding_window=None, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}), None),
    }
    gen = torch.Generator().manual_seed(20240607)
    ids = torch.randint(0, 256, (48,), generator=gen).tolist()
    for name, (cls, config, shard) in models.items():
        config._attn_implementation = "eager"
        model = cls(config).eval()
        randomize(model, gen)
        if config.tie_word_embeddings:
            model.tie_weights()
        out_dir = os.path.join(out_root, name)
        tmp_dir = out_dir + ".tmp"
        if shard:
            model.save_pretrained(tmp_dir, max_shard_size=shard)
        else:
            model.save_pretrained(tmp_dir)
        run_reference(model, ids, list(range(len(ids))), tmp_dir, "reference", {"model": name})
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp_dir, out_dir)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model", help="reference logits of a HF model dir on Austen text")
    m.add_argument("--model")
    m.add_argument("--text")
    m.add_argument("--tokens", type=int, default=300)
    m.add_argument("--last", type=int, default=8)
    m.add_argument("--out")
    t = sub.add_parser("tiny", help="tiny random Llama3/Qwen2/Mistral models and their logits")
    t.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if args.cmd == "model":
        cmd_model(args)
    else:
        cmd_tiny(args)


if __name__ == "__main__":
    main()
