#!/usr/bin/env bash
# `make demo`: the main job of voc on the sample bundled in assets/voc-sample (3 real PASCAL VOC images:
# 2 labelled train images with their masks, 1 test image).
#
# 1. `voc predict` segments the labelled train split and writes its submission (so it can be scored),
# 2. `voc validate` and `voc score` check and grade it against the true labels and masks,
# 3. `voc train classify` trains a multi-label classifier head on frozen MobileNetV2 features (seconds;
#    with 2 labelled images it validates on them too: a demonstration, not a measurement),
# 4. `voc predict` writes the submission for the test split, labels from that classifier, with the masks
#    and overlays of every image,
# 5. `voc attack classify` sweeps FGSM over 0-8/255 against that classifier,
# 6. `voc report` puts the data, the runs and the scored submission on one HTML page.
#
# The segmenter's weights come from the Hugging Face hub cache: `make` sets HF_HOME=../shared/hf and
# HF_HUB_OFFLINE=1 when that folder exists; otherwise they are downloaded into ~/.cache/huggingface.
set -euo pipefail
cd "$(dirname "$0")/.."
VOC=${VOC:-target/release/voc}
DATA=assets/voc-sample
OUT=${OUT:-out/demo}
if [[ ! -x "$VOC" ]]; then
  echo "demo: $VOC not found; build it with \`cargo build --release -p voc-cli\` (make demo does)" >&2
  exit 1
fi
mkdir -p "$OUT"
echo "voc demo: the sample in $DATA, outputs in $OUT" >&2
"$VOC" info

echo
echo "== 1. predict the labelled train split"
"$VOC" predict --data "$DATA" --split train --out "$OUT/train_submission.csv" \
  --save-masks "$OUT/train_masks" --save-overlays "$OUT/train_overlays"

echo
echo "== 2. validate and score it against the ground truth"
"$VOC" validate --data "$DATA" --split train --submission "$OUT/train_submission.csv"
"$VOC" score --data "$DATA" --split train --submission "$OUT/train_submission.csv" | tee "$OUT/train_score.txt"

echo
echo "== 3. train a classifier head on frozen MobileNetV2 features"
rm -rf "$OUT/classifier"
"$VOC" train classify --data "$DATA" --model mobilenet_v2 --mode frozen --val-split train \
  --epochs 20 --views 2 --out "$OUT/classifier"

echo
echo "== 4. predict the test split (the file to upload), labels from the classifier"
"$VOC" predict --data "$DATA" --split test --out "$OUT/submission.csv" \
  --classifier "$OUT/classifier/best.safetensors" \
  --save-masks "$OUT/test_masks" --save-overlays "$OUT/test_overlays"
"$VOC" validate --data "$DATA" --split test --submission "$OUT/submission.csv"

echo
echo "== 5. attack the classifier: an FGSM sweep on the labelled train split"
rm -rf "$OUT/attack"
"$VOC" attack classify --classifier "$OUT/classifier/best.safetensors" --data "$DATA" --split train \
  --attack fgsm --eps 0,2,4,8 --out "$OUT/attack"

echo
echo "== 6. the report: data, the classifier run, the attack and the scored submission on one page"
OUT="$OUT" VOC="$VOC" bash assets/report.sh

echo
echo "demo done. Where everything went:"
echo "  $OUT/submission.csv            submission for the test split"
echo "  $OUT/train_submission.csv      submission for the labelled train split, scored in $OUT/train_score.txt"
echo "  $OUT/{train,test}_masks/       predicted masks: {split}_{Id}.npy (HxW uint8) and .png (VOC colours)"
echo "  $OUT/{train,test}_overlays/    each photo with its predicted mask blended over it"
echo "  $OUT/classifier/               the classifier run: best.safetensors, metrics.jsonl, curves.png"
echo "  $OUT/attack/                   the attack run: report.json, adversarial PNGs, galleries, curves.png"
echo "  $OUT/report.html               all of it on one page (open it in a browser)"
