#!/usr/bin/env bash
# Runs THERE, after tools/gpu/device_setup.sh: the scan's timing test, then Nsight Compute over
# it — every kernel's duration (one pass each) and the scan kernel's speed-of-light, occupancy
# and warp-stall sections for the 3-problem and the 9-problem (share 3) configurations.
# Output to $OUT (or .gpu/scan-profile).
#
#   bash tools/gpu/scan_profile.sh
#   bash tools/gpu/scan_profile.sh durations 3,6   only the kernels' durations, of the timing
#                                                  test's configurations 3 and 6 (0-based), each
#                                                  kernel (template arguments apart) its median
set -uo pipefail
cd "$(dirname "$0")/../.."
source tools/gpu/env.sh
T=$KIV_BUILD_DIR/tests/kernels/kernels_scan_test
OUTDIR=${OUT:-$KIV_GPU/scan-profile}
mkdir -p "$OUTDIR"
"$T" -tc='*timing*' 2>&1 | grep "MESSAGE" | sed 's/.*MESSAGE: //'
command -v ncu >/dev/null || { echo "no ncu"; exit 0; }
if [ "${1:-}" = detail ]; then  # detail CONFIGS SKIP COUNT: sections of MmaScan launches
  export KIV_SCAN_TIMING_CONFIGS=${2:?which configurations}
  ncu --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
    --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section InstructionStats \
    --section SourceCounters -k regex:"${KERNEL:-MmaScan}" \
    --launch-skip "${3:-10}" --launch-count "${4:-2}" "$T" -tc='*timing*' >"$OUTDIR/ncu-detail.txt" 2>&1
  grep -E "MmaScan|Finish|Duration|Throughput|Achieved Occupancy|Theoretical Occupancy|Stall|Warp Cycles|Issued|Eligible|Executed Ipc|Pipe|Executed Instructions|scan.cu:" \
    "$OUTDIR/ncu-detail.txt" | cut -c1-160 | head -120
  exit 0
fi
if [ "${1:-}" = durations ]; then
  export KIV_SCAN_TIMING_CONFIGS=${2:?which configurations}
  ncu --metrics gpu__time_duration.sum --csv "$T" -tc='*timing*' >"$OUTDIR/ncu-durations.csv" 2>/dev/null
  python3 - "$OUTDIR/ncu-durations.csv" "$KIV_SCAN_TIMING_CONFIGS" <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head, rows = rows[0], rows[1:]
ki, vi = head.index("Kernel Name"), head.index("Metric Value")
configs = sys.argv[2].split(",")
# Each configuration: 55 calls in order; a call's kernels are those between two memsets' worth of
# the same first kernel, so split the launches into len(configs) equal runs.
per_config = len(rows) // len(configs)
for i, cfg in enumerate(configs):
    part = rows[i * per_config:(i + 1) * per_config]
    names = {}
    for r in part:
        names.setdefault(r[ki].split("(")[0], []).append(float(r[vi].replace(",", "")) / 1e3)
    print(f"configuration {cfg}: {len(part)} launches")
    for name, v in names.items():
        v.sort()
        print(f"  {name[:90]:90s} x{len(v):4d}  median {v[len(v)//2]:7.1f} us")
PY
  exit 0
fi
# Per kernel durations: the timing test's configurations run 55 calls each, in order.
ncu --metrics gpu__time_duration.sum --csv "$T" -tc='*timing*' >"$OUTDIR/ncu-durations.csv" 2>/dev/null
python3 - "$OUTDIR/ncu-durations.csv" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head, rows = rows[0], rows[1:]
ki, vi, ui = head.index("Kernel Name"), head.index("Metric Value"), head.index("Metric Unit")
print("unit:", rows[0][ui] if rows else "none")
per = collections.OrderedDict()
for r in rows:
    per.setdefault(r[ki].split("(")[0].split("<")[0], []).append(float(r[vi].replace(",", "")))
# Calls of each config: (5 warm-up + 50) per config; kernels per call = MmaScan, Pass1, Pass2, Compact.
for name, v in per.items():
    n = len(v) // 6 if len(v) >= 6 else len(v)
    print(name, "median us per config:",
          [round(sorted(v[i*n:(i+1)*n])[n//2] / 1e3, 1) for i in range(len(v) // n)])
PY
for skip in 10 175; do
  ncu --section SpeedOfLight --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis \
    -k regex:MmaScan --launch-skip $skip --launch-count 1 "$T" -tc='*timing*' >"$OUTDIR/ncu-scan-$skip.txt" 2>&1
  grep -E "Duration|Throughput|Achieved Occupancy|Registers|Theoretical Occupancy|Stall|Warp Cycles|L1/TEX Hit|Issued" "$OUTDIR/ncu-scan-$skip.txt" | head -40
done
