#!/usr/bin/env bash
# `make demo`: the main job of voc on the sample bundled in assets/.
set -euo pipefail
cd "$(dirname "$0")/.."
VOC=target/release/voc
echo "voc demo: the sample in assets/voc-sample, outputs in out/demo" >&2
mkdir -p out/demo
"$VOC" info
