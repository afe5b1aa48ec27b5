#!/usr/bin/env python3
"""Capture post-RoPE queries, keys and values of SmolLM2 over Austen text, for kiv's index/ work.

    tools/capture/capture.py [--model DIR] [--text FILE] [--tokens N] [--layers L,L,...] [--out DIR]

Runs the model (transformers, float32, CPU) once over the first N tokens of the text and saves,
for the chosen layers, exactly what the attention function receives: queries [H_q][T][d] and keys
[H_kv][T][d] after RoPE, and values [H_kv][T][d], before any repeat_kv for GQA. The format is
described in tools/capture/README.md (format "kiv-capture-1").

How: a custom attention function is registered with transformers' AttentionInterface under the
name "kiv_capture". Llama's attention module computes q/k/v, applies RoPE and then calls it; it
records the tensors of the chosen layers and hands the call on to transformers' own sdpa
function, so the model computes exactly what it computes with attn_implementation="sdpa".

Checks (the script fails when one does not hold):
  1. logits at the first 512 positions of the capture pass equal those of a stock "sdpa" run
     over the first 512 tokens (max |diff| < 1e-4);
  2. for every captured layer, causal softmax attention recomputed in float64 from the saved
     files (GQA: query head j uses kv head j // (H_q/H_kv), scale 1/sqrt(d)) equals what the
     hook's attention returned, at 4 positions (max |diff| < 1e-4);
  3. when layer 0 is captured: its q and k rebuilt from the token embeddings (RMSNorm, q/k_proj,
     then RoPE written out here: dims i and i + d/2 rotate together by t * theta^(-2i/d)) equal
     the captured ones (max relative diff < 1e-4), which pins down the RoPE convention.

Idempotent: when OUT/.complete holds the same parameters, it prints "capture: present at OUT"
and exits before importing torch. The output is built in OUT.tmp-PID and renamed into place.
"""
import argparse
import fcntl
import hashlib
import importlib.metadata as md
import json
import os
import shutil
import sys
import time

FORMAT = "kiv-capture-1"
DEFAULT_CACHE = os.environ.get("KIV_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kiv")
DEFAULT_LAYERS = "0,3,6,9,12,15,18,21,24,27,29"
CHECK_LOGITS_TOKENS = 512
TOL = 1e-4


def say(msg):
    print(f"capture: {msg}", flush=True)


def die(msg):
    print(f"capture: ERROR: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_fingerprint(model_dir):
    """The model folder's own marker (fetch_model.sh writes gguf_sha256=... there)."""
    try:
        with open(os.path.join(model_dir, ".complete")) as f:
            for line in f:
                if line.startswith("gguf_sha256="):
                    return line.strip()
    except OSError:
        pass
    return "model.safetensors_sha256=" + sha256_file(os.path.join(model_dir, "model.safetensors"))


def file_names(layer):
    return {x: f"layer_{layer:02d}.{x}.f32" for x in ("q", "k", "v")}


def expected_files(meta):
    """name -> byte size, for every data file a complete capture holds."""
    T, d = meta["tokens"], meta["head_dim"]
    sizes = {meta["files"]["tokens"]: 4 * T}
    for layer in meta["layers"]:
        names = file_names(layer)
        sizes[names["q"]] = 4 * meta["num_q_heads"] * T * d
        sizes[names["k"]] = 4 * meta["num_kv_heads"] * T * d
        sizes[names["v"]] = 4 * meta["num_kv_heads"] * T * d
    return sizes


def is_complete(out, params):
    try:
        with open(os.path.join(out, ".complete")) as f:
            if json.load(f) != params:
                return False
        with open(os.path.join(out, "meta.json")) as f:
            meta = json.load(f)
        for name, size in expected_files(meta).items():
            if os.path.getsize(os.path.join(out, name)) != size:
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=os.path.join(DEFAULT_CACHE, "models", "SmolLM2-135M-Instruct"))
    p.add_argument("--text", default=os.path.join(DEFAULT_CACHE, "text", "austen", "pride_and_prejudice.txt"))
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--layers", default=DEFAULT_LAYERS)
    p.add_argument("--out", default=os.path.join(DEFAULT_CACHE, "captures", "smollm2-austen-8k"))
    p.add_argument("--force", action="store_true", help="capture again even when present")
    a = p.parse_args(argv)
    a.model = os.path.abspath(os.path.expanduser(a.model))
    a.text = os.path.abspath(os.path.expanduser(a.text))
    a.out = os.path.abspath(os.path.expanduser(a.out))
    try:
        a.layer_list = sorted(set(int(x) for x in a.layers.split(",") if x.strip()))
    except ValueError:
        p.error(f"--layers must be comma-separated integers, got {a.layers!r}")
    if not a.layer_list:
        p.error("--layers is empty")
    if a.tokens < CHECK_LOGITS_TOKENS:
        p.error(f"--tokens must be at least {CHECK_LOGITS_TOKENS} (the logits check uses that many)")
    return a


def build_params(a):
    for path in (os.path.join(a.model, "config.json"), os.path.join(a.model, "model.safetensors"), a.text):
        if not os.path.isfile(path):
            die(f"missing {path} (run tools/model/fetch_model.sh and tools/data/austen.sh first)")
    return {
        "format": FORMAT,
        "model_dir": a.model,
        "model_fingerprint": model_fingerprint(a.model),
        "text": a.text,
        "text_sha256": sha256_file(a.text),
        "tokens": a.tokens,
        "layers": a.layer_list,
        "dtype": "float32",
        "torch": md.version("torch"),
        "transformers": md.version("transformers"),
        "capture_script_version": 1,
    }


def layer_stats(x):
    """x: [H, T, d] float32 numpy. Per head: mean token norm, ||mean vector|| / mean norm."""
    import numpy as np
    x = x.astype(np.float64)
    norms = np.linalg.norm(x, axis=-1)                 # [H, T]
    mean_norm = norms.mean(axis=1)                     # [H]
    mean_vec_norm = np.linalg.norm(x.mean(axis=1), axis=-1)  # [H]
    centred = np.linalg.norm(x - x.mean(axis=1, keepdims=True), axis=-1).mean(axis=1)
    return mean_norm, mean_vec_norm / mean_norm, centred / mean_norm


def check_rope(model, input_ids, captured, rope_theta, d):
    """Layer 0 only: rebuild q and k from the embeddings with RoPE written out here (rotate-half
    pairing, as in Llama: dims i and i + d/2 rotate together by angle t * theta^(-2i/d)) and
    compare. transformers forms the angle t * inv_freq in float32 (inv_freq itself in float32),
    which at t ~ 8K is off the exact angle by up to ~5e-4 rad; the check uses that float32 angle,
    and the difference to the exact (float64) angle is reported too.
    Returns (max rel diff vs float32-angle RoPE, max rel diff vs exact RoPE)."""
    import torch
    attn = model.model.layers[0].self_attn
    h = model.model.layers[0].input_layernorm(model.model.embed_tokens(input_ids))[0].double()
    T = h.shape[0]
    inv32 = 1.0 / (rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    ang32 = (torch.arange(T, dtype=torch.float32)[:, None] * inv32[None, :]).double()         # [T, d/2]
    inv64 = 1.0 / (rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang64 = torch.arange(T, dtype=torch.float64)[:, None] * inv64[None, :]
    worst = [0.0, 0.0]
    for name, proj in (("q", attn.q_proj), ("k", attn.k_proj)):
        x = (h @ proj.weight.double().T).view(T, -1, d).transpose(0, 1)                 # [H, T, d]
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        got = torch.from_numpy(captured[0][name]).double()
        for i, ang in enumerate((ang32, ang64)):
            cos, sin = torch.cos(ang), torch.sin(ang)
            rot = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
            worst[i] = max(worst[i], ((rot - got).abs().max() / rot.abs().max()).item())
    return tuple(worst)


def capture(a, params):
    import numpy as np
    import torch
    from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    import transformers
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(a.model)
    with open(a.text, encoding="utf-8") as f:
        text = f.read()
    ids_all = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids_all) < a.tokens:
        die(f"{a.text} has only {len(ids_all)} tokens, fewer than --tokens {a.tokens}")
    ids = ids_all[: a.tokens]
    T = len(ids)
    say(f"text: {a.text}: {len(ids_all)} tokens, using the first {T}")

    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    cfg = model.config
    L = cfg.num_hidden_layers
    Hq, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // Hq
    rope = getattr(cfg, "rope_parameters", None) or {}
    rope_theta = float(rope.get("rope_theta", getattr(cfg, "rope_theta", 0.0)))
    if not rope_theta:
        die("cannot find rope_theta in the model config")
    bad = [l for l in a.layer_list if not 0 <= l < L]
    if bad:
        die(f"layers {bad} out of range: the model has {L} layers")
    if T > cfg.max_position_embeddings:
        say(f"WARNING: {T} tokens is past the model's max_position_embeddings {cfg.max_position_embeddings}")
    say(f"model: {a.model}: {L} layers, {Hq} q heads, {Hkv} kv heads, head_dim {d}, rope_theta {rope_theta}"
        f" (loaded in {time.time() - t0:.1f}s)")

    # ---- the hook ------------------------------------------------------------------------------
    captured = {}                         # layer -> dict(q, k, v) as float32 numpy [H, T, d]
    hook_out = {}                         # layer -> attention output at the check positions
    check_pos = [0, 1, T // 2 + 1, T - 1]
    state = {"record": False}

    def kiv_capture_attention(module, query, key, value, attention_mask, **kwargs):
        layer = module.layer_idx
        if state["record"] and layer in a.layer_list:
            B = query.shape[0]
            if B != 1 or query.shape[1] != Hq or key.shape[1] != Hkv or value.shape[1] != Hkv \
                    or query.shape[2] != T or key.shape[2] != T or query.shape[3] != d:
                raise RuntimeError(f"layer {layer}: unexpected shapes q{tuple(query.shape)} "
                                   f"k{tuple(key.shape)} v{tuple(value.shape)}")
            captured[layer] = {n: x[0].detach().to(torch.float32).contiguous().numpy().copy()
                               for n, x in (("q", query), ("k", key), ("v", value))}
        out, weights = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        if state["record"] and layer in a.layer_list:
            # out: [B, T, H_q, d] (sdpa_attention_forward transposes back)
            hook_out[layer] = out[0, check_pos].detach().to(torch.float64).numpy().copy()
        return out, weights

    AttentionInterface.register("kiv_capture", kiv_capture_attention)
    AttentionMaskInterface.register("kiv_capture", sdpa_mask)   # same masks as stock sdpa

    input_ids = torch.tensor([ids], dtype=torch.long)
    with torch.inference_mode():
        # Reference: stock sdpa over the first 512 tokens.
        t1 = time.time()
        ref_logits = model(input_ids[:, :CHECK_LOGITS_TOKENS], use_cache=False).logits[0].float()
        say(f"reference pass (stock sdpa, {CHECK_LOGITS_TOKENS} tokens): {time.time() - t1:.1f}s")

        # The capture pass: one forward over all T tokens.
        model.set_attn_implementation("kiv_capture")
        if model.config._attn_implementation != "kiv_capture":
            die(f"could not switch attention to kiv_capture (got {model.config._attn_implementation})")
        state["record"] = True
        t1 = time.time()
        hidden = model.model(input_ids, use_cache=False).last_hidden_state
        state["record"] = False
        forward_s = time.time() - t1
        say(f"capture pass ({T} tokens, one forward): {forward_s:.1f}s")
        missing = [l for l in a.layer_list if l not in captured]
        if missing:
            die(f"the hook did not see layers {missing}; attention was not routed through it")
        rope_diff = check_rope(model, input_ids, captured, rope_theta, d) if 0 in captured else None
        cap_logits = model.lm_head(hidden[:, :CHECK_LOGITS_TOKENS])[0].float()
        del hidden
        logits_diff = (cap_logits - ref_logits).abs().max().item()
        argmax_agree = (cap_logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item()
        del cap_logits, ref_logits
    say(f"check 1: logits, capture pass vs stock sdpa, first {CHECK_LOGITS_TOKENS} positions: "
        f"max |diff| = {logits_diff:.3e} (top-1 agreement {argmax_agree:.4f})")
    if not logits_diff < TOL:
        die(f"check 1 FAILED: max |logit diff| {logits_diff:.3e} >= {TOL}")

    # ---- write into OUT.tmp-PID ------------------------------------------------------------------
    tmp = f"{a.out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        np.asarray(ids, dtype="<u4").tofile(os.path.join(tmp, "tokens.u32"))
        for layer in a.layer_list:
            for n, fname in file_names(layer).items():
                captured[layer][n].astype("<f4", copy=False).tofile(os.path.join(tmp, fname))
        meta = {
            "format": FORMAT,
            "model_dir": a.model,
            "model": os.path.basename(a.model.rstrip("/")),
            "text": a.text,
            "tokens": T,
            "num_layers": L,
            "layers": a.layer_list,
            "num_q_heads": Hq,
            "num_kv_heads": Hkv,
            "head_dim": d,
            "rope_theta": rope_theta,
            "dtype": "float32",
            "files": {"tokens": "tokens.u32", "q": "layer_{l:02d}.q.f32",
                      "k": "layer_{l:02d}.k.f32", "v": "layer_{l:02d}.v.f32"},
        }
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")
        for name, size in expected_files(meta).items():
            got = os.path.getsize(os.path.join(tmp, name))
            if got != size:
                die(f"{name}: wrote {got} bytes, expected {size}")

        # ---- check 2: attention recomputed from the files as written -----------------------------
        group = Hq // Hkv
        worst = 0.0
        per_layer = {}
        for layer in a.layer_list:
            names = file_names(layer)
            q = np.fromfile(os.path.join(tmp, names["q"]), dtype="<f4").reshape(Hq, T, d).astype(np.float64)
            k = np.fromfile(os.path.join(tmp, names["k"]), dtype="<f4").reshape(Hkv, T, d).astype(np.float64)
            v = np.fromfile(os.path.join(tmp, names["v"]), dtype="<f4").reshape(Hkv, T, d).astype(np.float64)
            diff = 0.0
            for i, t in enumerate(check_pos):
                for j in range(Hq):
                    s = k[j // group, : t + 1] @ q[j, t] / np.sqrt(d)
                    p = np.exp(s - s.max())
                    p /= p.sum()
                    o = p @ v[j // group, : t + 1]
                    diff = max(diff, float(np.abs(o - hook_out[layer][i, j]).max()))
            per_layer[layer] = diff
            worst = max(worst, diff)
        say(f"check 2: attention recomputed (float64) from the saved q,k,v vs the hook's sdpa output, "
            f"positions {check_pos}, all {Hq} heads: max |diff| = {worst:.3e} over layers; per layer "
            + ", ".join(f"{l}:{e:.1e}" for l, e in per_layer.items()))
        if not worst < TOL:
            die(f"check 2 FAILED: max |attention diff| {worst:.3e} >= {TOL}")

        if rope_diff is not None:
            say(f"check 3: layer 0 q and k recomputed from the token embeddings (RMSNorm, q/k_proj, RoPE with "
                f"theta {rope_theta:g}, pairs (i, i+{d // 2}), angle t*inv_freq in float32 as transformers "
                f"forms it) vs captured: max relative diff = {rope_diff[0]:.3e}; with the exact float64 "
                f"angle instead: {rope_diff[1]:.3e} (for information)")
            if not rope_diff[0] < TOL:
                die(f"check 3 FAILED: layer-0 q/k are not the post-RoPE projections (max rel diff {rope_diff[0]:.3e})")

        with open(os.path.join(tmp, ".complete"), "w") as f:
            json.dump(params, f, indent=2)
            f.write("\n")
        if os.path.exists(a.out):
            old = f"{a.out}.old-{os.getpid()}"
            os.rename(a.out, old)
            shutil.rmtree(old)
        os.rename(tmp, a.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    total = sum(expected_files(meta).values())
    say(f"wrote {a.out}: {len(expected_files(meta)) + 2} files, {total:,} bytes of data "
        f"({total / 2**20:.1f} MiB) in {time.time() - t0:.1f}s total")

    # ---- statistics ------------------------------------------------------------------------------
    say("per layer: mean token norm |x|, and ||mean_t x|| / mean |x| per head (how much a centring "
        "vector could remove); centred = mean |x - mean| / mean |x|")
    print(f"{'layer':>5} | {'|k|':>6} {'k: ||mean||/|k| per kv head':>30} {'k centred':>10} | "
          f"{'|q|':>6} {'q: ||mean||/|q| min/mean/max':>30} {'q centred':>10} | {'|v|':>6}")
    for layer in a.layer_list:
        kn, kr, kc = layer_stats(captured[layer]["k"])
        qn, qr, qc = layer_stats(captured[layer]["q"])
        vn, _, _ = layer_stats(captured[layer]["v"])
        print(f"{layer:>5} | {kn.mean():6.2f} {' '.join(f'{r:.3f}' for r in kr):>30} {kc.mean():10.3f} | "
              f"{qn.mean():6.2f} {f'{qr.min():.3f} / {qr.mean():.3f} / {qr.max():.3f}':>30} "
              f"{qc.mean():10.3f} | {vn.mean():6.2f}", flush=True)


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    params = build_params(a)
    if not a.force and is_complete(a.out, params):
        say(f"present at {a.out}")
        return 0
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    # One run at a time per output; a second one waits, then finds the capture present.
    with open(os.path.join(os.path.dirname(a.out), "." + os.path.basename(a.out) + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not a.force and is_complete(a.out, params):
            say(f"present at {a.out}")
            return 0
        # Leftovers of killed runs (we hold the lock, so none of them is running now).
        parent, base = os.path.split(a.out)
        for name in os.listdir(parent):
            if name.startswith(base + ".tmp-") or name.startswith(base + ".old-"):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        capture(a, params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
