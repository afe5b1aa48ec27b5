#!/usr/bin/env python3
"""Compares two KIV_TRACE_RETRIEVAL files (runtime/tiered_cache.cpp): each decode step's retrieved
cold tokens per layer and kv-head, e.g. the same needle cell on the CPU and on CUDA.

    python3 tools/trace_diff.py cpu.trace cuda.trace [--show N]

Prints how many (step, layer, head) entries both have, how many differ, the first N that differ
(in step, layer, head order) with the ids only one side picked, and per layer how many entries
differ. Exit status 0 when they are identical, 1 when they differ, 2 on bad input.
"""
import argparse
import collections
import sys


def read(path):
    entries = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                fields = dict(part.split("=", 1) for part in line.split())
                key = (int(fields["t"]), int(fields["layer"]), int(fields["head"]))
                ids = [int(x) for x in fields["ids"].split(",") if x]
            except (KeyError, ValueError) as e:
                sys.exit(f"{path}:{number}: not a trace line ({e}): {line[:80]}")
            if key in entries:
                # Several sessions in one file (e.g. a grid of needle cells): keep the first.
                continue
            entries[key] = ids
    return entries


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--show", type=int, default=5, help="differing entries to print (default 5)")
    args = ap.parse_args()
    a, b = read(args.a), read(args.b)
    common = sorted(set(a) & set(b))
    only = len(set(a) ^ set(b))
    if not common:
        print(f"no (step, layer, head) in common ({len(a)} and {len(b)} entries)")
        return 2
    differ = [k for k in common if a[k] != b[k]]
    print(f"{len(common)} entries in both, {only} in one only, {len(differ)} differ")
    for k in differ[: args.show]:
        sa, sb = set(a[k]), set(b[k])
        print(f"  t={k[0]} layer={k[1]} head={k[2]}: {len(sa)} vs {len(sb)} ids, "
              f"only in {args.a}: {sorted(sa - sb)[:12]}, only in {args.b}: {sorted(sb - sa)[:12]}")
    per_layer = collections.Counter(k[1] for k in differ)
    if per_layer:
        print("differing entries per layer: " +
              ", ".join(f"{layer}: {n}" for layer, n in sorted(per_layer.items())))
    return 1 if differ or only else 0


if __name__ == "__main__":
    sys.exit(main())
