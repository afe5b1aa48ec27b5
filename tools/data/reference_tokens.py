#!/usr/bin/env python3
"""Reference token ids from the Python `tokenizers` library, for tests/runtime/tokenizer_test.cpp.

The C++ tokenizer (runtime/tokenizer.cpp) must give the same ids as `tokenizers` does with the
model's tokenizer.json. This script writes what the library gives:

  encode --tokenizer T.json --text F --out O.u32
      The ids of F's text (no special tokens added), little-endian uint32, and O.u32.json with
      the count and the sha256 of both inputs.

  all --model DIR --text F --out-dir D
      Everything the C++ test compares, into D (made fresh, then D/manifest.json last):
      - austen.u32: the ids of F with DIR/tokenizer.json;
      - chat.json: transformers' apply_chat_template(tokenize=False) on fixed conversations,
        with DIR's own template and with Llama-3's, and the ids of the first one;
      - stress.txt: a fixed multilingual text (scripts, digits, kinds of whitespace, combining
        marks, emoji, special tokens, random mixtures from a seeded generator);
      - variant_NAME.json: DIR's vocabulary and merges under other pre-tokenizers (Llama-3's
        and Qwen2's regexes, GPT-2's ByteLevel with a prefix space, every Split behavior), and
        for each: variant_NAME.stress.u32 and .austen.u32, and the stress text's ids with the
        post-processor's special tokens (.stress_special.u32);
      - decode.json: decodings of windows of the stress ids that cut characters in two (so the
        C++ must replace the same bytes with U+FFFD).

Needs `tokenizers`, and `transformers` for the chat references (tools/model/fetch_model.sh
installs both).
"""

import argparse
import copy
import hashlib
import json
import os
import random
import shutil
import struct
import sys

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Meta-Llama-3-8B-Instruct's chat template.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")

CONVERSATIONS = [
    # The fixed 3-message conversation: no system message, so SmolLM2's default one is added.
    {"name": "three_messages", "add_generation_prompt": True, "messages": [
        {"role": "user", "content": "Who is Mr. Darcy?"},
        {"role": "assistant", "content": "A wealthy gentleman in Pride and Prejudice."},
        {"role": "user", "content": "Where does he live?"}]},
    {"name": "with_system", "add_generation_prompt": False, "messages": [
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": "  Name a novel by Jane Austen.\n"},
        {"role": "assistant", "content": "Emma, published in 1815."}]},
]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_ids(path, ids):
    with open(path, "wb") as f:
        f.write(struct.pack("<%dI" % len(ids), *ids))


def encode_file(tokenizer, text_path, out_path, add_special=False):
    with open(text_path, encoding="utf-8", newline="") as f:  # keep \r\n as it is
        text = f.read()
    ids = tokenizer.encode(text, add_special_tokens=add_special).ids
    write_ids(out_path, ids)
    return ids


def stress_text():
    """A fixed text that reaches the corners of the pre-tokenizer regexes."""
    lines = [
        "I'm sure you're right; they'VE gone, He'S here, 'tis O'Neil's, don't 'll 'd 'M.",
        "In 1811, 12345678 and 3.14159 -- 1,000,000; ½ ⅓ ² ٣٤٥ ४२ 一二三 Ⅻ ⑦ 𝟗.",
        "a  b   c\t\td\n\n\ne \r\n f\u00a0g\u2003h\u3000i\u180ej\u200bk\u2028l\u0085m  \n  ",
        "café cafe\u0301 naïve Å A\u030a ﬁ ǅ Ω Ω K K ẛ̣ q̣̇",
        "Москва, Ελλάδα, 日本語のテキスト, 中文字符, 한국어, עברית, العربية, हिन्दी, ไทย, ᠮᠣᠩᠭᠣᠯ",
        "👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ 🙂🙂🙂 \U0001F600x",
        "!!!!!!!!!!!!!!  ------  ......  ?!?!  \"quoted\"  (paren) [b] {c} <d> #e $f %g ^h &i *j",
        "          many spaces\n\n\n\n\n\t\t\t    \n",
        "<|im_start|>user\nHi<|im_end|>\n<|endoftext|> <|im_sta <<|im_end|>> <|im_end|><|im_end|>",
        "'ſ 'S 'K 'ſt 'Ll 'RE", "def f(x):\n    return x**2  # comment\r\n\tpass\n",
        "\x01\x02\x7f control \x1b[0m", "mark<mark>mark  <mark>  mark word sword words word.",
        "Tab\tafter\ttabs\u000b\u000cfeeds", "   leading", "trailing   ",
    ]
    pool = ("abcXYZ éüßøœ ЖжЯ αβΩ 中文日本 한글 ١٢٣ 0123456789 ½²Ⅻ  \t\n\r\u00a0\u2003\u3000\u180e"
            "\u200b\u2028 .,;:!?'\"-_()[]{}<>/\\|@#$%^&*+=~` \u0301\u0308\u030a 👍🏽❤️🇫🇷‍ "
            "ſK'sre've")
    rng = random.Random(20240613)
    for _ in range(3000):
        lines.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 40))))
    return "\n".join(lines * 2) + "\n"


def variants(base):
    """DIR's tokenizer under other pre-tokenizers: each reaches a branch of the C++."""
    out = {}

    def make(name, pre, normalizer=None, ignore_merges=False, post=None, extra_added=()):
        t = copy.deepcopy(base)
        t["pre_tokenizer"] = pre
        t["normalizer"] = normalizer
        t["model"]["ignore_merges"] = ignore_merges
        if post is not None:
            t["post_processor"] = post
        next_id = max(max(t["model"]["vocab"].values()), max(a["id"] for a in t["added_tokens"]))
        for a in extra_added:
            next_id += 1
            t["added_tokens"].append(dict(a, id=next_id))
        out[name] = t

    bl_noregex = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": False}
    bos = "<|im_start|>"
    bos_id = next(a["id"] for a in base["added_tokens"] if a["content"] == bos)
    template = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}
    make("llama3", {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated",
         "invert": False}, bl_noregex]}, ignore_merges=True,
         post={"type": "Sequence", "processors": [
             {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
              "use_regex": True}, template]})
    make("qwen2", {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated",
         "invert": False}, bl_noregex]}, normalizer={"type": "NFC"})
    make("gpt2_prefix_space", {"type": "ByteLevel", "add_prefix_space": True,
                               "trim_offsets": True, "use_regex": True})
    make("split_behaviors", {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": "."}, "behavior": "MergedWithPrevious",
         "invert": False},
        {"type": "Split", "pattern": {"Regex": r"\s+"}, "behavior": "MergedWithNext",
         "invert": False},
        {"type": "Split", "pattern": {"Regex": "[aeiou]+"}, "behavior": "Contiguous",
         "invert": True},
        {"type": "Split", "pattern": {"Regex": "[#$%]"}, "behavior": "Removed", "invert": False},
        {"type": "Digits", "individual_digits": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
         "use_regex": True}]},
        extra_added=[
            {"content": "<mark>", "single_word": False, "lstrip": True, "rstrip": True,
             "normalized": False, "special": True},
            {"content": "word", "single_word": True, "lstrip": False, "rstrip": False,
             "normalized": True, "special": False}])
    return out


def chat_references(model_dir, tokenizer):
    from transformers import AutoTokenizer  # slow to import: only here
    tok = AutoTokenizer.from_pretrained(model_dir)
    own = tok.chat_template
    cases = []
    for template_name, template in (("model", own), ("llama3", LLAMA3_TEMPLATE)):
        tok.chat_template = template
        for conv in CONVERSATIONS:
            text = tok.apply_chat_template(conv["messages"], tokenize=False,
                                           add_generation_prompt=conv["add_generation_prompt"])
            cases.append({"template": template_name, "name": conv["name"],
                          "add_generation_prompt": conv["add_generation_prompt"],
                          "messages": conv["messages"], "expected": text,
                          "expected_ids": tokenizer.encode(text, add_special_tokens=False).ids})
    return {"bos_token": tok.bos_token, "llama3_template": LLAMA3_TEMPLATE, "cases": cases}


def decode_references(tokenizer, ids):
    rng = random.Random(7)
    windows = []
    for _ in range(400):
        start = rng.randrange(0, len(ids) - 8)
        window = ids[start:start + rng.randint(1, 8)]
        windows.append({"ids": window, "text": tokenizer.decode(window, skip_special_tokens=False),
                        "text_skip_special": tokenizer.decode(window, skip_special_tokens=True)})
    return windows


def run_all(args):
    from tokenizers import Tokenizer
    tok_path = os.path.join(args.model, "tokenizer.json")
    tmp = args.out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    base_tok = Tokenizer.from_file(tok_path)
    austen = encode_file(base_tok, args.text, os.path.join(tmp, "austen.u32"))
    with open(os.path.join(tmp, "stress.txt"), "w", encoding="utf-8", newline="") as f:
        f.write(stress_text())
    stress_path = os.path.join(tmp, "stress.txt")
    stress_ids = encode_file(base_tok, stress_path, os.path.join(tmp, "stress.u32"))
    with open(tok_path, encoding="utf-8") as f:
        base = json.load(f)
    names = []
    for name, spec in variants(base).items():
        path = os.path.join(tmp, "variant_%s.json" % name)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(spec, f, ensure_ascii=False)
        t = Tokenizer.from_file(path)
        encode_file(t, stress_path, path[:-5] + ".stress.u32")
        encode_file(t, stress_path, path[:-5] + ".stress_special.u32", add_special=True)
        encode_file(t, args.text, path[:-5] + ".austen.u32")
        names.append(name)
    with open(os.path.join(tmp, "decode.json"), "w", encoding="utf-8") as f:
        json.dump(decode_references(base_tok, stress_ids), f, ensure_ascii=False)
    with open(os.path.join(tmp, "chat.json"), "w", encoding="utf-8") as f:
        json.dump(chat_references(args.model, base_tok), f, ensure_ascii=False, indent=1)
    manifest = {"tokenizer_json_sha256": sha256_file(tok_path),
                "text_sha256": sha256_file(args.text), "austen_count": len(austen),
                "stress_count": len(stress_ids), "variants": names}
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    shutil.rmtree(args.out_dir, ignore_errors=True)
    os.rename(tmp, args.out_dir)
    print("reference_tokens: %d ids for %s, %d for the stress text, %d variants -> %s" %
          (len(austen), args.text, len(stress_ids), len(names), args.out_dir))


def run_encode(args):
    from tokenizers import Tokenizer
    ids = encode_file(Tokenizer.from_file(args.tokenizer), args.text, args.out)
    with open(args.out + ".json", "w") as f:
        json.dump({"count": len(ids), "tokenizer_json_sha256": sha256_file(args.tokenizer),
                   "text_sha256": sha256_file(args.text)}, f, indent=1)
    print("reference_tokens: %d ids -> %s" % (len(ids), args.out))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("encode", help="ids of one text with one tokenizer.json")
    e.add_argument("--tokenizer", required=True)
    e.add_argument("--text", required=True)
    e.add_argument("--out", required=True)
    a = sub.add_parser("all", help="every reference the C++ test compares")
    a.add_argument("--model", required=True)
    a.add_argument("--text", required=True)
    a.add_argument("--out-dir", required=True)
    args = p.parse_args()
    (run_encode if args.cmd == "encode" else run_all)(args)


if __name__ == "__main__":
    sys.exit(main())
