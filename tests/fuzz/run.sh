#!/usr/bin/env bash
# `make fuzz`: seeds each target's corpus (tests/fuzz/seeds plus the real files of assets/ and ../shared),
# then runs every target (or those named) for FUZZ_SECONDS each and prints one table row per target:
# executions, corpus size, crashes. Needs a nightly toolchain and `cargo install cargo-fuzz`.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${FUZZ_SECONDS:-600}
SHARED=${SHARED:-../../../shared}
TARGETS=${*:-npy label_csv submission image weights hub_config run_folder}

seed() {
  local t=$1
  mkdir -p "corpus/$t"
  cp -n seeds/"$t"/* "corpus/$t"/ 2>/dev/null || true
  case $t in
    npy) cp -n ../../assets/voc-sample/train/seg/*.npy ../../assets/voc-sample/test/img/*.npy "corpus/$t"/ 2>/dev/null || true ;;
    label_csv) for f in ../../assets/voc-sample/*/*_set.csv; do cp -n "$f" "corpus/$t/$(basename "$(dirname "$f")")_$(basename "$f")"; done ;;
    image)
      if [[ -d $SHARED/data/voc2012-subset ]]; then
        # Arrays, not `ls | head`: under pipefail a closed pipe would end the script.
        local masks=("$SHARED"/data/voc2012-subset/SegmentationClass/*.png)
        local photos=("$SHARED"/data/voc2012-subset/JPEGImages/*.jpg)
        cp -n "${masks[@]:0:4}" "${photos[@]:0:3}" "corpus/$t"/
      fi ;;
    weights) [[ -f $SHARED/reference/ops.safetensors ]] && cp -n "$SHARED/reference/ops.safetensors" "corpus/$t"/ ;;
    hub_config)
      if [[ -d $SHARED/hf ]]; then
        local i=0 f
        while IFS= read -r f; do cp -n "$f" "corpus/$t/config_$i.json"; i=$((i+1)); done < <(find "$SHARED/hf" -name config.json)
      fi ;;
  esac
  return 0
}

if [[ -z ${FUZZ_NO_HEADER:-} ]]; then
  printf '| target | seconds | executions | corpus | crashes |\n|---|---:|---:|---:|---:|\n'
fi
for t in $TARGETS; do
  seed "$t"
  log="corpus/$t.log"
  set +e
  cargo +nightly fuzz run --fuzz-dir . -O "$t" "corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 -max_len=262144 -print_final_stats=1 > "$log" 2>&1
  rc=$?
  set -e
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  corpus=$(ls "corpus/$t" | wc -l)
  crashes=$(ls "artifacts/$t" 2>/dev/null | wc -l)
  printf '| %s | %s | %s | %s | %s%s |\n' "$t" "$SECONDS_EACH" "${runs:-?}" "$corpus" "$crashes" "$([[ $rc -ne 0 ]] && echo " (exit $rc, see tests/fuzz/$log)")"
done
