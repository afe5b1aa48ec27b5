#!/usr/bin/env bash
# Runs THERE, after tools/gpu/device_setup.sh: where the GPU time of kiv's steps goes, per kernel,
# under Nsight Compute (random weights of SmolLM2's shape; speed does not depend on the weights).
#
#   bash tools/gpu/step_profile.sh decode [BYTES]   # a session of BYTES of Austen (default 17500:
#                                                  # ~4,400 tokens; 4100000: ~1M tokens), then
#                                                  # its captured decode step: the whole graph's
#                                                  # GPU time, and every node timed on its own
#   bash tools/gpu/step_profile.sh prefill [BYTES] [SKIP] [COUNT]
#                                                  # a prefill of BYTES (default 1100000: ~256K
#                                                  # tokens); COUNT kernels (default 3000, ~2.5
#                                                  # chunks) after the first SKIP (default
#                                                  # 250000) timed, summed per kernel name
#
# The decode commands are the ones docs/decode-step-inventory.md was measured with. Output (CSV
# and a per-kernel summary) to $OUT, or .gpu/step-profile. Flags of every run: --no-scan-norms
# --evict-batch 16 --reserve-cold 1048576 (the bench's). Note: ncu replays each profiled kernel,
# so a profiled step is far slower than a real one; compare the nodes' durations, not the wall.
set -uo pipefail
cd "$(dirname "$0")/../.."
source tools/gpu/env.sh
B=$KIV_BUILD_DIR
OUTDIR=${OUT:-$KIV_GPU/step-profile}
mkdir -p "$OUTDIR"
command -v ncu >/dev/null || { echo "step_profile: no ncu on this machine"; exit 1; }
MODEL=/tmp/kiv-random-smollm2
kiv_random_model same "$MODEL" >/dev/null || exit 1
TEXT=$KIV_GPU/text/austen
mode=${1:-decode}
bytes=${2:-}
prompt=$(mktemp)
# The novels one after another (emma last), cut to the bytes asked for.
make_prompt() { cat "$TEXT"/sense_and_sensibility.txt "$TEXT"/pride_and_prejudice.txt \
  "$TEXT"/mansfield_park.txt "$TEXT"/northanger_abbey.txt "$TEXT"/persuasion.txt \
  "$TEXT"/emma.txt 2>/dev/null | head -c "$1" >"$prompt"; }
F=(--model "$MODEL" --device cuda --no-scan-norms --evict-batch 16 --reserve-cold 1048576 --raw)
N=(ncu --clock-control none --cache-control none --csv --page raw)
summary() {  # per kernel name: calls, total and median microseconds
  python3 - "$1" <<'PY'
import csv, sys, collections, statistics
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 5]
if not rows: sys.exit("no rows")
head, rows = rows[0], rows[1:]
ki = head.index("Kernel Name")
ti = head.index("gpu__time_duration.sum")
per = collections.defaultdict(list)
for r in rows:
    try: per[r[ki].split("(")[0][:70]].append(float(r[ti].replace(",", "")))
    except ValueError: pass  # the units row
total = sum(sum(v) for v in per.values())
print(f"{'kernel':70} {'calls':>6} {'total us':>10} {'median us':>10} {'share':>6}")
for k, v in sorted(per.items(), key=lambda kv: -sum(kv[1])):
    print(f"{k:70} {len(v):6d} {sum(v)/1e3:10.1f} {statistics.median(v)/1e3:10.2f} {sum(v)/total:6.1%}")
PY
}
case "$mode" in
  decode)
    make_prompt "${bytes:-17500}"
    session=/tmp/kiv-step-profile.kiv
    rm -f "$session"
    "$B/cli/kiv" run "${F[@]}" --prompt-file "$prompt" --max-new 8 --session "$session" x \
      >"$OUTDIR/session.log" 2>&1 || { tail -5 "$OUTDIR/session.log"; exit 1; }
    "${N[@]}" --graph-profiling graph --metrics gpu__time_duration.sum --log-file "$OUTDIR/graph.csv" \
      "$B/cli/kiv" run "${F[@]}" --max-new 6 --session "$session" x >/dev/null 2>&1
    "${N[@]}" --graph-profiling node --metrics \
      gpu__time_duration.sum,launch__grid_size,launch__block_size,launch__registers_per_thread,dram__bytes_read.sum,dram__bytes_write.sum \
      --log-file "$OUTDIR/nodes.csv" "$B/cli/kiv" run "${F[@]}" --max-new 2 --session "$session" x \
      >/dev/null 2>&1
    echo "== whole graph (one row per replay; ns) =="
    python3 - "$OUTDIR/graph.csv" <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 5]
head = rows[0]
ki, ti = head.index("Kernel Name"), head.index("gpu__time_duration.sum")
for r in rows[1:]:
    if r[ki] == "graph": print(r[ti])
PY
    echo "== nodes, summed per kernel over the profiled replays =="
    summary "$OUTDIR/nodes.csv" | tee "$OUTDIR/nodes-summary.txt"
    ;;
  prefill)
    make_prompt "${bytes:-1100000}"
    "${N[@]}" --metrics gpu__time_duration.sum --launch-skip "${3:-250000}" --launch-count "${4:-3000}" \
      --log-file "$OUTDIR/prefill.csv" "$B/cli/kiv" run "${F[@]}" --prompt-file "$prompt" --max-new 1 x \
      >"$OUTDIR/prefill-run.log" 2>&1
    summary "$OUTDIR/prefill.csv" | tee "$OUTDIR/prefill-summary.txt"
    ;;
  *) echo "usage: step_profile.sh decode [BYTES] | prefill [BYTES] [SKIP] [COUNT]"; exit 2 ;;
esac
rm -f "$prompt"
