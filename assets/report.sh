#!/usr/bin/env bash
# `make report`: the HTML report of the demo's runs (`make demo` writes them, then calls this).
set -euo pipefail
cd "$(dirname "$0")/.."
VOC=${VOC:-target/release/voc}
DATA=assets/voc-sample
OUT=${OUT:-out/demo}
for need in "$OUT/classifier/config.json" "$OUT/attack/report.json" "$OUT/train_submission.csv"; do
  if [[ ! -e "$need" ]]; then
    echo "report: $need not found; run \`make demo\` first" >&2
    exit 1
  fi
done
"$VOC" report "$OUT/classifier" "$OUT/attack" --data "$DATA" \
  --submission "$OUT/train_submission.csv" --split train \
  --title "voc demo on the bundled sample" --out "$OUT/report.html"
echo "report: open $OUT/report.html in a browser"
