#!/usr/bin/env bash
# The KL of kiv against the full cache (QUALITY.md 3: 8,192 tokens of context, 256 scored
# decode steps) for several retrieval settings side by side, on the GPU machine's 16 cores: which
# knob buys fidelity, and how far the best possible top-k selection (the oracle) gets.
#
#   bash tools/gpu/kl_grid.sh            # after tools/gpu/device_setup.sh; results in $OUT
#
# Each setting is one `kiv bench fidelity --parts kl` process on 2 threads (8 at a time), writing
# $OUT/kl_<setting>.json (the device tool brings back at most 8 files); the table goes to stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/gpu/env.sh
KIV=${KIV:-build-gpu/cli/kiv}
OUT=${OUT:-build-gpu/kl_grid}
CONTEXT=${KIV_KL_CONTEXT:-8192}
SCORED=${KIV_KL_SCORED:-256}
mkdir -p "$OUT"
logs=$(mktemp -d)
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
# KIV_KL_GRID="name=args;name=args" replaces the grid above (at most 8 settings: the device
# tool brings back 8 files), e.g. KIV_KL_GRID="w1024_t1024=--window 1024 --tail-samples 1024".
if [[ -n "${KIV_KL_GRID:-}" ]]; then
  GRID=()
  IFS=';' read -ra settings <<<"$KIV_KL_GRID"
  for setting in "${settings[@]}"; do
    GRID[${setting%%=*}]="${setting#*=}"
  done
fi
for name in "${!GRID[@]}"; do
  threads=2
  # shellcheck disable=SC2086
  "$KIV" bench fidelity --parts kl --no-codec-arm --no-recall --threads $threads \
    --kl-context "$CONTEXT" --kl-scored "$SCORED" ${GRID[$name]} \
    --out "$OUT/kl_$name.json" >"$logs/$name.log" 2>&1 &
done
wait || true
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
rows, merged = [], {}
for f in sorted(os.listdir(out)):
    if not (f.startswith("kl_") and f.endswith(".json")):
        continue
    name = f[3:-5]
    try:
        d = json.load(open(os.path.join(out, f)))
    except Exception as e:  # a failed run: say so in the table
        rows.append(f"| {name} | failed: {e} | | | | |")
        continue
    merged[name] = d
    k = d["kl"]["kiv"]
    s = k["speed"]
    rows.append(f"| {name} | {k['kl_median']:.4g} | {k['kl_p95']:.4g} | {k['kl_max']:.4g} | "
                f"{k['top1_agreement']:.4f} | {s['decode_tok_s']:.2f} |")
table = ("| setting | KL median | KL p95 | KL max | top-1 | decode tok/s (2 threads) |\n"
         "| --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n")
print(table)
PY
for f in "$logs"/*.log; do echo "== $(basename "$f")"; tail -4 "$f"; done
