#!/usr/bin/env bash
# The KL of kiv against the full cache (QUALITY.md 3: 8,192 tokens of context, 256 scored
# decode steps) for several retrieval settings side by side, on the GPU machine's 16 cores: which
# knob buys fidelity, and how far the best possible top-k selection (the oracle) gets.
#
#   bash tools/gpu/kl_grid.sh            # after tools/gpu/device_setup.sh; results in $OUT
#
# Each setting is one `kiv bench fidelity --parts kl` process on 2 threads (8 at a time); the
# merged result is $OUT/kl_grid.json, a table $OUT/kl_grid.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/gpu/env.sh
KIV=${KIV:-build-gpu/cli/kiv}
OUT=${OUT:-build-gpu/kl_grid}
CONTEXT=${KIV_KL_CONTEXT:-8192}
SCORED=${KIV_KL_SCORED:-256}
work=$(mktemp -d)
declare -A GRID=(
  [default]=""
  [oracle]="--oracle"
  [k128]="--k 128"
  [k256]="--k 256"
  [oracle_k256]="--oracle --k 256"
  [window1024]="--window 1024"
  [summary16]="--summary-page 16"
  [cuda_default]="--device cuda"
)
for name in "${!GRID[@]}"; do
  threads=2
  # shellcheck disable=SC2086
  "$KIV" bench fidelity --parts kl --no-codec-arm --no-recall --threads $threads \
    --kl-context "$CONTEXT" --kl-scored "$SCORED" ${GRID[$name]} \
    --out "$work/$name.json" >"$work/$name.log" 2>&1 &
done
wait || true
mkdir -p "$OUT"
python3 - "$work" "$OUT" <<'PY'
import json, os, sys
work, out = sys.argv[1], sys.argv[2]
rows, merged = [], {}
for f in sorted(os.listdir(work)):
    if not f.endswith(".json"):
        continue
    name = f[:-5]
    try:
        d = json.load(open(os.path.join(work, f)))
    except Exception as e:  # a failed run: say so in the table
        rows.append(f"| {name} | failed: {e} | | | | |")
        continue
    merged[name] = d
    k = d["kl"]["kiv"]
    s = k["speed"]
    rows.append(f"| {name} | {k['kl_median']:.4g} | {k['kl_p95']:.4g} | {k['kl_max']:.4g} | "
                f"{k['top1_agreement']:.4f} | {s['decode_tok_s']:.2f} |")
open(os.path.join(out, "kl_grid.json"), "w").write(json.dumps(merged, indent=1))
table = ("| setting | KL median | KL p95 | KL max | top-1 | decode tok/s (2 threads) |\n"
         "| --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n")
open(os.path.join(out, "kl_grid.md"), "w").write(table)
print(table)
PY
for f in "$work"/*.log; do echo "== $(basename "$f")"; tail -4 "$f"; done
