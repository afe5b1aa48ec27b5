#!/usr/bin/env python3
"""Random-weight Llama models for speed measurements only (speed does not depend on the weights;
fidelity does: QUALITY.md), with the tokenizer and vocabulary of --tokenizer-from.

--shape 1b: Llama-3.2-1B's body (hidden 2048, 16 layers, 32 query heads, 8 kv-heads of 64 dims,
MLP 8192) with SmolLM2's vocabulary (49,152, tied embeddings): 0.97B parameters, bf16.
--shape same: the shape of --tokenizer-from's config.json (e.g. SmolLM2-135M where only its
tokenizer files travel to the GPU machine).

    python3 tools/gpu/make_random_model.py --shape 1b \
        --tokenizer-from ~/.cache/kiv/models/SmolLM2-135M-Instruct --out /tmp/random-1b
"""
import argparse
import json
import os
import shutil

import torch
from safetensors.torch import save_file


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer-from", required=True, help="model directory whose tokenizer files are copied")
    ap.add_argument("--out", required=True)
    ap.add_argument("--shape", choices=["1b", "same"], default="1b")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    src = json.load(open(os.path.join(a.tokenizer_from, "config.json")))
    cfg = dict(src) if a.shape == "same" else {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
        "vocab_size": src["vocab_size"], "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": True,
        "hidden_act": "silu", "torch_dtype": "bfloat16",
        "bos_token_id": src.get("bos_token_id"), "eos_token_id": src.get("eos_token_id"),
    }
    os.makedirs(a.out, exist_ok=True)
    g = torch.Generator().manual_seed(a.seed)
    h, f = cfg["hidden_size"], cfg["intermediate_size"]
    d = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d

    def w(*shape, std=0.02):
        return (torch.randn(*shape, generator=g) * std).to(torch.bfloat16)

    t = {"model.embed_tokens.weight": w(cfg["vocab_size"], h), "model.norm.weight": torch.ones(h, dtype=torch.bfloat16)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = w(q, h)
        t[p + "self_attn.k_proj.weight"] = w(kv, h)
        t[p + "self_attn.v_proj.weight"] = w(kv, h)
        t[p + "self_attn.o_proj.weight"] = w(h, q)
        t[p + "mlp.gate_proj.weight"] = w(f, h)
        t[p + "mlp.up_proj.weight"] = w(f, h)
        t[p + "mlp.down_proj.weight"] = w(h, f)
        t[p + "input_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
        t[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    if not cfg.get("tie_word_embeddings", True):
        t["lm_head.weight"] = w(cfg["vocab_size"], h)
    save_file(t, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
    json.dump(cfg, open(os.path.join(a.out, "config.json"), "w"), indent=2)
    for name in os.listdir(a.tokenizer_from):
        if name.startswith("tokenizer") or name in ("special_tokens_map.json", "generation_config.json",
                                                    "chat_template.jinja"):
            shutil.copy(os.path.join(a.tokenizer_from, name), a.out)
    n = sum(x.numel() for x in t.values())
    print(f"{a.out}: {n / 1e9:.3f}B parameters (random, bf16)")


if __name__ == "__main__":
    main()
