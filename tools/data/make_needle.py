#!/usr/bin/env python3
"""Writes a needle-in-a-haystack document: a stretch of an Austen novel with one passkey sentence
planted at a given depth (QUALITY.md "Needle"). Deterministic: the same arguments give the same
bytes.

  make_needle.py --book emma --chars 16000 --depth 0.25 --key 48213 --out needle.txt
"""
import argparse
import os
import sys


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    cache = os.environ.get("KIV_CACHE", os.path.expanduser("~/.cache/kiv"))
    p.add_argument("--text-dir", default=os.path.join(cache, "text", "austen"))
    p.add_argument("--book", default="emma")
    p.add_argument("--offset", type=int, default=20000, help="first character of the haystack")
    p.add_argument("--chars", type=int, default=16000, help="haystack length (about 4 chars a token)")
    p.add_argument("--depth", type=float, default=0.25, help="where the needle goes, 0..1")
    p.add_argument("--key", default="48213")
    p.add_argument("--exact-depth", action="store_true",
                   help="plant at exactly depth x length, inside a sentence if it falls there")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    path = os.path.join(a.text_dir, a.book + ".txt")
    if not os.path.exists(path):
        sys.exit(f"make_needle: {path} is missing (tools/data/austen.sh fetches the text)")
    text = open(path, encoding="utf-8").read()
    hay = text[a.offset:a.offset + a.chars]
    if len(hay) < a.chars:
        sys.exit(f"make_needle: {a.book} has fewer than {a.offset + a.chars} characters")
    at = int(len(hay) * a.depth)
    if a.exact_depth:
        needle = f" The secret passkey is {a.key}. Remember it. "
    else:  # at a sentence boundary at or after the depth, so no sentence is cut
        dot = hay.find(". ", at)
        at = dot + 2 if dot >= 0 else at
        needle = f"The secret passkey is {a.key}. Remember it. "
    with open(a.out, "w", encoding="utf-8") as f:
        f.write(hay[:at] + needle + hay[at:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
