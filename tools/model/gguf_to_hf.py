#!/usr/bin/env python3
"""Convert the SmolLM2-135M-Instruct GGUF into a plain HuggingFace model directory, then verify it.

    gguf_to_hf.py GGUF OUT_DIR            convert, then verify
    gguf_to_hf.py --verify-only GGUF DIR  verify an existing directory

Weights are dequantized with the `gguf` package and written as float32 safetensors. float32, not
bfloat16: every dequantized GGUF value (Q4_1: d*q + m with float16 d, m; Q8_0: d*q) is exactly
representable in float32, so the HF model *is* the GGUF model, bit for bit. bfloat16 (8-bit
mantissa) would round those values a second time and make a slightly different model. The runtime
may cast on load; the reference stays exact. (135M parameters, about 540 MB on disk.)

The tokenizer is rebuilt from the GGUF vocabulary and merges with the pre-tokenizer llama.cpp uses
for `tokenizer.ggml.pre = smollm` (every digit alone, then the GPT-2 split), which is also the
original SmolLM2 tokenizer.json (Digits(individual_digits) + ByteLevel). transformers' own GGUF
tokenizer conversion is not used for the saved files: it sets eos to <|im_start|> and leaves out
the digit split.

Verification (fails loudly, exit 1):
  * shapes: 30 layers, 9 query / 3 key-value heads, head_dim 64, vocabulary 49152, tied embeddings;
  * every weight equals the one transformers' own GGUF loader produces (an independent dequantizer);
  * token ids equal a reference BPE that follows llama.cpp's rules on the GGUF vocabulary and
    merges, for sample texts with digits, accents, whitespace runs and chat special tokens;
    decode(encode(text)) == text;
  * a greedy chat answer to "What is the capital of France?" is printed and must mention Paris.
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would flood logs

import numpy as np
import gguf

EXPECT = dict(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
              vocab_size=49152)

SAMPLES = [
    "The quick brown fox jumps over the lazy dog.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife.",
    "In 2024, 12345 people paid $3.50 each; 7/8 of them left at 10:30pm.",
    "Naïve café owners in Zürich said “bonjour” — and 東京 too 🙂!",
    "  leading spaces,\ttabs,\n\nblank lines,   and   runs of spaces   \n",
    "def f(x):\n    return x**2  # comment\n",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "Mrs. Bennet's daughters—Jane, Elizabeth, Mary, Kitty and Lydia—weren't 'out' yet.",
]

GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"""


def log(msg):
    print(f"gguf_to_hf: {msg}", flush=True)


def fail(msg):
    print(f"gguf_to_hf: ERROR: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


# ----------------------------------------------------------------------------------- GGUF reading
def field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def read_meta(reader):
    arch = field(reader, "general.architecture")
    if arch != "llama":
        fail(f"expected a llama GGUF, got architecture {arch!r}")
    p = "llama."
    n_head = int(field(reader, p + "attention.head_count"))
    hidden = int(field(reader, p + "embedding_length"))
    tokens = field(reader, "tokenizer.ggml.tokens")
    meta = dict(
        vocab_size=int(field(reader, p + "vocab_size", len(tokens))),
        hidden_size=hidden,
        intermediate_size=int(field(reader, p + "feed_forward_length")),
        num_hidden_layers=int(field(reader, p + "block_count")),
        num_attention_heads=n_head,
        num_key_value_heads=int(field(reader, p + "attention.head_count_kv", n_head)),
        head_dim=int(field(reader, p + "rope.dimension_count", hidden // n_head)),
        max_position_embeddings=int(field(reader, p + "context_length")),
        # stored as float32 (9.999999747e-06); the model was trained with 1e-5
        rms_norm_eps=float(f"{field(reader, p + 'attention.layer_norm_rms_epsilon'):.7g}"),
        rope_theta=float(f"{field(reader, p + 'rope.freq_base', 10000.0):.7g}"),
        bos_token_id=int(field(reader, "tokenizer.ggml.bos_token_id")),
        eos_token_id=int(field(reader, "tokenizer.ggml.eos_token_id")),
        pad_token_id=int(field(reader, "tokenizer.ggml.padding_token_id",
                               field(reader, "tokenizer.ggml.eos_token_id"))),
        unk_token_id=int(field(reader, "tokenizer.ggml.unknown_token_id", 0)),
    )
    return meta


def tokenizer_data(reader):
    tokens = list(field(reader, "tokenizer.ggml.tokens"))
    types = list(field(reader, "tokenizer.ggml.token_type"))
    merges = list(field(reader, "tokenizer.ggml.merges"))
    model = field(reader, "tokenizer.ggml.model")
    pre = field(reader, "tokenizer.ggml.pre")
    if model != "gpt2" or pre != "smollm":
        fail(f"expected tokenizer gpt2/smollm, got {model}/{pre}")
    special = [i for i, t in enumerate(types) if t == gguf.TokenType.CONTROL]
    return tokens, merges, special, field(reader, "tokenizer.chat_template")


# -------------------------------------------------------------------------------------- weights
def unpermute(w, n_head):
    """Undo llama.cpp's convert_hf_to_gguf permute() of q/k rows (rotary pair layout)."""
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
             .swapaxes(1, 2).reshape(w.shape))


NAME_MAP = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def hf_state_dict(reader, meta):
    import torch
    sd = {}
    for t in reader.tensors:
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape([int(x) for x in reversed(t.shape)])  # GGUF lists dims fastest first
        name = t.name
        if name == "token_embd.weight":
            hf = "model.embed_tokens.weight"
        elif name == "output_norm.weight":
            hf = "model.norm.weight"
        elif name == "output.weight":
            hf = "lm_head.weight"
        elif name.startswith("blk."):
            _, layer, kind, _ = name.split(".")
            if kind not in NAME_MAP:
                fail(f"unknown GGUF tensor {name}")
            if kind == "attn_q":
                w = unpermute(w, meta["num_attention_heads"])
            elif kind == "attn_k":
                w = unpermute(w, meta["num_key_value_heads"])
            hf = f"model.layers.{layer}.{NAME_MAP[kind]}.weight"
        else:
            fail(f"unknown GGUF tensor {name}")
        sd[hf] = torch.from_numpy(np.array(w, dtype=np.float32, order="C", copy=True))
    return sd


# ------------------------------------------------------------------------------------ tokenizer
def build_tokenizer(tokens, merges, special, meta, chat_template):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        fail("duplicate tokens in the GGUF vocabulary")
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=pairs, dropout=None, unk_token=None,
                              continuing_subword_prefix="", end_of_word_suffix="",
                              fuse_unk=False, byte_fallback=False))
    tk.normalizer = None
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in special])
    name = lambda i: tokens[i]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=name(meta["bos_token_id"]), eos_token=name(meta["eos_token_id"]),
        pad_token=name(meta["pad_token_id"]), unk_token=name(meta["unk_token_id"]),
        model_max_length=meta["max_position_embeddings"],
        add_prefix_space=False, clean_up_tokenization_spaces=False,
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast


def bytes_to_unicode():
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class ReferenceBPE:
    """Independent tokenizer following llama.cpp (LLAMA_VOCAB_PRE_TYPE_SMOLLM) on the GGUF data:
    special tokens split out first; then the regexes "\\p{N}" and the GPT-2 split applied in turn,
    text a regex does not match kept as its own fragment; byte-level BPE by merge rank."""

    def __init__(self, tokens, merges, special):
        import regex
        self.re = regex
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(merges)}
        self.specials = sorted((tokens[i] for i in special), key=len, reverse=True)
        self.byte_map = bytes_to_unicode()
        self.cache = {}

    def _split(self, pattern, fragments):
        out = []
        for frag in fragments:
            pos = 0
            for m in self.re.finditer(pattern, frag):
                if m.start() > pos:
                    out.append(frag[pos:m.start()])
                if m.end() > m.start():
                    out.append(m.group())
                pos = m.end()
            if pos < len(frag):
                out.append(frag[pos:])
        return out

    def _bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        parts = list(word)
        while len(parts) > 1:
            best = min(((self.ranks.get((a, b), 1 << 30), i)
                        for i, (a, b) in enumerate(zip(parts, parts[1:]))))
            if best[0] == 1 << 30:
                break
            i = best[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        ids = [self.vocab[p] for p in parts]
        self.cache[word] = ids
        return ids

    def encode(self, text):
        ids = []
        pattern = "(" + "|".join(self.re.escape(s) for s in self.specials) + ")"
        for piece in self.re.split(pattern, text):
            if not piece:
                continue
            if piece in self.specials:
                ids.append(self.vocab[piece])
                continue
            for frag in self._split(GPT2_SPLIT, self._split(r"\p{N}", [piece])):
                word = "".join(self.byte_map[b] for b in frag.encode("utf-8"))
                ids.extend(self._bpe(word))
        return ids


# ---------------------------------------------------------------------------------------- steps
def convert(gguf_path, out_dir):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    t0 = time.time()
    reader = gguf.GGUFReader(gguf_path)
    meta = read_meta(reader)
    log(f"GGUF metadata: {json.dumps(meta)}")
    tokens, merges, special, chat_template = tokenizer_data(reader)
    names = {t.name for t in reader.tensors}
    tied = "output.weight" not in names
    config = LlamaConfig(
        vocab_size=meta["vocab_size"], hidden_size=meta["hidden_size"],
        intermediate_size=meta["intermediate_size"], num_hidden_layers=meta["num_hidden_layers"],
        num_attention_heads=meta["num_attention_heads"],
        num_key_value_heads=meta["num_key_value_heads"], head_dim=meta["head_dim"],
        max_position_embeddings=meta["max_position_embeddings"], rms_norm_eps=meta["rms_norm_eps"],
        rope_theta=meta["rope_theta"], hidden_act="silu", tie_word_embeddings=tied,
        bos_token_id=meta["bos_token_id"], eos_token_id=meta["eos_token_id"],
        pad_token_id=meta["pad_token_id"], architectures=["LlamaForCausalLM"],
    )
    sd = hf_state_dict(reader, meta)
    log(f"dequantized {len(sd)} tensors to float32 ({time.time() - t0:.1f}s)")
    model = LlamaForCausalLM(config).to(torch.float32)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        fail(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    if tied:
        model.tie_weights()
    model.generation_config = GenerationConfig(
        bos_token_id=meta["bos_token_id"], eos_token_id=meta["eos_token_id"],
        pad_token_id=meta["pad_token_id"])
    model.save_pretrained(out_dir, safe_serialization=True)
    tok = build_tokenizer(tokens, merges, special, meta, chat_template)
    tok.save_pretrained(out_dir)
    # Name the generic class that every transformers version (4.x and 5.x) loads tokenizer.json
    # with unchanged (5.x writes "TokenizersBackend", which 4.x does not know).
    tc_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(tc_path) as f:
        tc = json.load(f)
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(tc_path, "w") as f:
        json.dump(tc, f, indent=2, sort_keys=True)
        f.write("\n")
    for name in os.listdir(out_dir):
        os.chmod(os.path.join(out_dir, name), 0o644)
    log(f"wrote {out_dir} ({time.time() - t0:.1f}s)")


def verify(gguf_path, out_dir):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    torch.manual_seed(0)
    t0 = time.time()
    problems = []

    cfg = AutoConfig.from_pretrained(out_dir)
    got = dict(num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
               num_key_value_heads=cfg.num_key_value_heads,
               head_dim=getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads),
               vocab_size=cfg.vocab_size)
    log(f"config: {got}, tie_word_embeddings={cfg.tie_word_embeddings}")
    if got != EXPECT:
        problems.append(f"shape mismatch: expected {EXPECT}, got {got}")

    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"loaded HF model: {n_params:,} parameters, dtype {next(model.parameters()).dtype}")

    # 1. weights against transformers' own GGUF loader (a second, independent dequantizer)
    gdir, gname = os.path.split(os.path.abspath(gguf_path))
    ref = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32)
    ours, theirs = model.state_dict(), ref.state_dict()
    if set(ours) != set(theirs):
        problems.append(f"tensor names differ: {sorted(set(ours) ^ set(theirs))[:8]}")
    worst = 0.0
    for k in sorted(set(ours) & set(theirs)):
        if ours[k].shape != theirs[k].shape:
            problems.append(f"{k}: shape {tuple(ours[k].shape)} vs {tuple(theirs[k].shape)}")
            continue
        worst = max(worst, (ours[k] - theirs[k]).abs().max().item())
    log(f"weights vs transformers' GGUF loader: {len(ours)} tensors, max |diff| = {worst}")
    if worst != 0.0:
        problems.append(f"weights differ from transformers' GGUF loader (max |diff| {worst})")
    gguf_tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    del ref, theirs

    # 2. tokenizer against the llama.cpp-rule reference on the GGUF vocabulary
    reader = gguf.GGUFReader(gguf_path)
    tokens, merges, special, _ = tokenizer_data(reader)
    bpe = ReferenceBPE(tokens, merges, special)
    for s in SAMPLES:
        ids = tok.encode(s, add_special_tokens=False)
        want = bpe.encode(s)
        if ids != want:
            problems.append(f"token ids differ from the GGUF reference for {s!r}:\n  hf  {ids}\n"
                            f"  ref {want}")
        if tok.decode(ids) != s:
            problems.append(f"decode(encode(s)) != s for {s!r}: {tok.decode(ids)!r}")
        if gguf_tok.encode(s, add_special_tokens=False) != ids:
            log(f"note: transformers' GGUF tokenizer differs on {s!r}")
    sample = SAMPLES[1]
    log(f"tokenizer: {len(SAMPLES)} samples match the GGUF reference; {sample[:40]!r}... -> "
        f"{tok.encode(sample, add_special_tokens=False)[:12]}...")
    for k in ("bos", "eos", "pad", "unk"):
        log(f"  {k}_token = {getattr(tok, k + '_token')!r} (id {getattr(tok, k + '_token_id')})")
    if tok.eos_token_id != cfg.eos_token_id or tok.bos_token_id != cfg.bos_token_id:
        problems.append("tokenizer bos/eos ids disagree with config.json")
    if len(tok) != EXPECT["vocab_size"]:
        problems.append(f"tokenizer has {len(tok)} tokens, expected {EXPECT['vocab_size']}")

    # 3. greedy chat answer
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=40, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    log(f"prompt: {len(ids['input_ids'][0])} tokens; greedy answer: {answer!r}")
    if "paris" not in answer.lower():
        problems.append(f"greedy answer does not mention Paris: {answer!r}")

    if problems:
        fail("verification failed:\n  " + "\n  ".join(problems))
    log(f"verification passed ({time.time() - t0:.1f}s)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gguf")
    ap.add_argument("out_dir")
    ap.add_argument("--verify-only", action="store_true")
    args = ap.parse_args()
    import torch
    import transformers
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    if not args.verify_only:
        os.makedirs(args.out_dir, exist_ok=True)
        convert(args.gguf, args.out_dir)
    verify(args.gguf, args.out_dir)


if __name__ == "__main__":
    main()
