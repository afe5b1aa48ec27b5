#!/usr/bin/env bash
# Runs THERE, on the GPU machine, in the repo root: tools/gpu/device_setup.sh (set up + build
# build-gpu/), then every test with ctest, then the needle smoke check of tools/up.sh on
# --device cuda and on --device cpu, printing both answers.
#
#   bash tools/gpu/test.sh [extra cmake arguments for device_setup]
#
#   KIV_GPU_CTEST_J=N        ctest jobs (default 4: the LibTorch tests use several threads each)
#   KIV_GPU_CTEST_ARGS="..." more ctest arguments, e.g. "-E model_test" or "-R kernels"
#   KIV_GPU_SKIP_CTEST=1     the smoke check only
#   KIV_GPU_CTEST_BUDGET=S   stop ctest after S seconds (so the smoke check still runs inside a
#                            `run` call's time limit); the tests not finished count as failed
# Logs: .gpu/logs/ctest.log, .gpu/logs/smoke-{cuda,cpu}.log, copied to $OUT when it is set.
# Exit status: 0 when setup, build, every test and both smoke runs (answer contains the passkey)
# passed; 1 otherwise. The smoke check runs even when a test failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
T0=$SECONDS
bash tools/gpu/device_setup.sh "$@" || { echo "test: device_setup failed"; exit 1; }
source tools/gpu/env.sh
LOGS=$KIV_GPU/logs
B=$KIV_BUILD_DIR
save_log() { if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then cp "$1" "$OUT/" 2>/dev/null || true; fi; }
status=0

# --- ctest --------------------------------------------------------------------------------------
if [ "${KIV_GPU_SKIP_CTEST:-0}" != 1 ]; then
  echo
  echo "== ctest (build-gpu, -j${KIV_GPU_CTEST_J:-4}) =="
  t=$SECONDS
  CLOG=$LOGS/ctest.log
  [ -n "${OUT:-}" ] && [ -d "$OUT" ] && CLOG=$OUT/ctest.log   # written there as it runs
  # shellcheck disable=SC2086
  budget=(); [ -n "${KIV_GPU_CTEST_BUDGET:-}" ] && budget=(timeout -k 10 "$KIV_GPU_CTEST_BUDGET")
  "${budget[@]}" ctest --test-dir "$B" --output-on-failure -V -j"${KIV_GPU_CTEST_J:-4}" ${KIV_GPU_CTEST_ARGS:-} >"$CLOG" 2>&1
  rc=$?
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "ctest: STOPPED after the budget of ${KIV_GPU_CTEST_BUDGET}s; unfinished tests:"
    for n in $(ctest --test-dir "$B" -N ${KIV_GPU_CTEST_ARGS:-} | sed -nE 's/^ *Test +#[0-9]+: (.*)$/\1/p'); do
      grep -qE "Test +#[0-9]+: $n \.+" "$CLOG" || echo "  $n"
    done
  fi
  [ "$CLOG" = "$LOGS/ctest.log" ] || cp "$CLOG" "$LOGS/ctest.log"
  grep -E "^ *[0-9]+/[0-9]+ Test +#" "$CLOG" | sed 's/^/  /'
  grep -E "tests passed|Total Test time|The following tests FAILED|^\s+[0-9]+ - .*\((Failed|Timeout|Not Run|SEGFAULT|Subprocess aborted)\)" "$CLOG"
  # Tests that skipped a part say so in a MESSAGE ("skipped: ...").
  grep -E "MESSAGE: .*skipp" "$CLOG" | sed -E 's/^[0-9]+: /  /' | sort -u | head -n 20
  echo "ctest: rc $rc in $((SECONDS - t))s (log: .gpu/logs/ctest.log${OUT:+, \$OUT/ctest.log})"
  [ "$rc" = 0 ] || status=1
fi

# --- smoke: the needle of tools/up.sh, on the GPU and on the CPU ---------------------------------
echo
echo "== smoke: kiv run on ~3,900 tokens of Emma with the passkey 48213 a quarter of the way in =="
NEEDLE=$B/needle_emma.txt
if ! python3 tools/data/make_needle.py --book emma --chars 16000 --depth 0.25 --exact-depth \
       --key 48213 --out "$NEEDLE"; then
  echo "smoke: cannot make the needle (no Austen text in $KIV_CACHE/text/austen?)"
  exit 1
fi
if [ ! -f "$KIV_CACHE/models/SmolLM2-135M-Instruct/.complete" ]; then
  echo "smoke: no model in $KIV_CACHE/models (carry both .gpu/model1 and .gpu/model2; see tools/gpu/README.md)"
  exit 1
fi
for dev in cuda cpu; do
  SLOG=$LOGS/smoke-$dev.log
  t=$SECONDS
  "$B/cli/kiv" run --device "$dev" --max-new 24 --prompt-file "$NEEDLE" \
    "What is the secret passkey mentioned in the text above?" >"$SLOG.out" 2>"$SLOG.err"
  rc=$?
  secs=$((SECONDS - t))
  answer=$(tr '\n' ' ' <"$SLOG.out")
  { echo "device=$dev rc=$rc seconds=$secs"; echo "--- stdout"; cat "$SLOG.out"; echo "--- stderr"; cat "$SLOG.err"; } >"$SLOG"
  rm -f "$SLOG.out" "$SLOG.err"
  save_log "$SLOG"
  verdict=FAIL; [ "$rc" = 0 ] && [[ "$answer" == *48213* ]] && verdict=ok
  echo "smoke --device $dev: rc $rc, ${secs}s, passkey ${verdict}: $answer"
  [ "$rc" = 0 ] || sed -n '/^--- stderr/,$p' "$SLOG" | tail -n 15
  [ "$verdict" = ok ] || status=1
done
echo
echo "test: $([ "$status" = 0 ] && echo PASSED || echo FAILED) in $((SECONDS - T0))s"
exit "$status"
