#!/usr/bin/env bash
# `voc bench` and the same workloads in PyTorch on one GPU, for the machines lent with a GPU and Python
# but no Rust toolchain: build the CUDA binary elsewhere (README, "CPU speed"), carry it, run this.
#
#   benches/gpu_bench.sh VOC_BINARY [PYTHON]      # writes JSON lines to $OUT (default: .) and a table
#
# Environment: DEVICE (default cuda), BATCH (32), ITERS (20), WARMUP (3). voc's CUDA binary links the
# CUDA 13 runtime libraries dynamically; when they are not on the loader path, they are looked up in the
# PyTorch installation's `nvidia/cu13/lib` (the PyPI wheels PyTorch itself uses).
set -euo pipefail
voc="${1:?usage: gpu_bench.sh VOC_BINARY [PYTHON]}"
python="${2:-python3}"
device="${DEVICE:-cuda}"
batch="${BATCH:-32}"
iters="${ITERS:-20}"
warmup="${WARMUP:-3}"
out="${OUT:-.}"
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$out"

if [[ "$device" == cuda* ]]; then
  cu13="$("$python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null || true)"
  if [ -n "$cu13" ] && [ -d "$cu13" ]; then
    export LD_LIBRARY_PATH="$cu13${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2
fi

voc_json="$out/gpu_bench_voc.jsonl"
torch_json="$out/gpu_bench_torch.jsonl"
: >"$voc_json"
: >"$torch_json"
failures=0
for model in mobilenet_v2 efficientnet_lite0 deeplabv3 deeplabv3plus; do
  for train in "" "--train"; do
    echo "voc $model batch $batch ${train:-inference}" >&2
    if ! "$voc" bench --model "$model" --batch "$batch" --device "$device" --iters "$iters" \
      --warmup "$warmup" $train --json >>"$voc_json"; then
      echo "voc bench failed: $model $train" >&2
      failures=$((failures + 1))
    fi
    # torch_compare.py has the two networks the CPU comparison uses.
    if [[ "$model" == mobilenet_v2 || "$model" == deeplabv3 ]]; then
      echo "torch $model batch $batch ${train:-inference}" >&2
      if ! "$python" "$here/torch_compare.py" bench --model "$model" --batch "$batch" --device "$device" \
        --iters "$iters" --warmup "$warmup" $train --json >>"$torch_json"; then
        echo "torch bench failed: $model $train" >&2
        failures=$((failures + 1))
      fi
    fi
  done
done

"$python" - "$voc_json" "$torch_json" <<'EOF'
import json, sys
voc = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
torch = {(r["model"], r["train"]): r for r in (json.loads(l) for l in open(sys.argv[2]) if l.strip())}
print("| model | batch | size | mode | voc ms | voc img/s | PyTorch ms | voc / PyTorch |")
print("|---|---:|---:|---|---:|---:|---:|---:|")
for r in voc:
    t = torch.get((r["model"], r["train"]))
    mode = "train step" if r["train"] else "inference"
    tms = f'{t["median_ms"]:.2f}' if t else "-"
    ratio = f'{r["median_ms"] / t["median_ms"]:.2f}x' if t else "-"
    print(f'| {r["model"]} | {r["batch"]} | {r["size"]} | {mode} | {r["median_ms"]:.2f} | '
          f'{r["images_per_s"]:.1f} | {tms} | {ratio} |')
EOF
echo "wrote $voc_json and $torch_json" >&2
exit $((failures > 0))
