#!/usr/bin/env python3
"""The `voc bench` workloads in PyTorch, and an interleaved side-by-side comparison.

Two modes:

  python benches/torch_compare.py bench --model mobilenet_v2 --batch 16 --size 224 [--train [--unfreeze K]]
                                       [--features] --json
      Times one workload in PyTorch and prints the same fields as `voc bench` (one JSON line with --json):
      model, device, batch, size, train, unfreeze, features, median_ms, min_ms, max_ms, images_per_s,
      peak_rss_mb.

  python benches/torch_compare.py bench --engine ort --model mobilenet_v2 --batch 16 --json
      The same inference workload in ONNX Runtime (onnxruntime from PyPI, in the same environment): the
      PyTorch twin exported with torch.onnx.export (opset 17) to a temporary file, run by an
      InferenceSession on the CPU with every graph optimisation and intra_op_num_threads = --threads.

  python benches/torch_compare.py compare --voc target/release/voc [--rounds 3] [--no-ort]
      Runs `voc bench`, the PyTorch version of each workload and, for inference workloads, the ONNX
      Runtime version, one after the other (each round starts with another engine, so none always runs
      on a warmer or quieter machine), several rounds, and prints a table of the medians of the per-run
      medians and the ratios voc / PyTorch and voc / ONNX Runtime against the targets.

The networks: torchvision's mobilenet_v2 (20 outputs, dropout 0.2) for the classifier, and for DeepLabV3
the "mobile" head of voc's DeepLabV3 (image pooling + 1x1 branch, projection, 1x1 classifier) on
torchvision's mobilenet_v2 features (without the final 1280-channel conv) at output stride 16, the logits
upsampled to the input size with align_corners=True; timm's resnet50, resnetv2_50 and vgg16 (20 outputs,
drop_rate 0.2; timm needed) for voc's resnet50, resnet50v2 and vgg16. Weights are random: speed does not
depend on them.
Training steps use SGD (momentum 0.9, weight decay 4e-5), BCE-with-logits for the classifier and
cross-entropy with ignore index 255 for the segmenter, batch norm in training mode.

The classifier trainer's workloads (`voc train classify`, mobilenet_v2 only):
  --train --unfreeze K  one fine-tuning step: the last K backbone blocks, the final 1x1 conv (features[18])
      and the 20-output head train, everything else has requires_grad False; every BatchNorm is frozen (eval
      mode, its scale and shift not trained); AdamW with lr 1e-3 on the head and 1e-4 on the backbone,
      weight decay 1e-4 on weights (not on biases), BCE-with-logits, dropout 0.2 on. A step is zero_grad,
      forward, loss, backward, step. See `finetune_start` for how voc's blocks map onto torchvision's.
  --features  the frozen feature pass: eval-mode forward up to the pooled 1280 features, no autograd.
PyTorch runs eagerly in NCHW with `torch.set_num_threads(2)`: PyTorch as it is usually run on a CPU.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

SEGMENTERS = {"deeplabv3", "deeplabv3plus"}


def peak_rss_mb():
    """VmHWM of this process in MiB, as `voc bench` reads it."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def build_model(name, torch, nn, F, torchvision):
    if name == "mobilenet_v2":
        return torchvision.models.mobilenet_v2(weights=None, num_classes=20, dropout=0.2)
    if name == "deeplabv3":
        return MobileDeepLabV3(torch, nn, F, torchvision)
    if name == "deeplabv3plus":
        return MobileDeepLabV3Plus(torch, nn, F, torchvision)
    if name in TIMM_NAMES:
        try:
            import timm
        except ImportError:
            raise SystemExit(f"torch_compare.py: --model {name} needs timm (pip install timm)")
        # The same layouts voc ports, with voc bench's head: 20 outputs, dropout 0.2 before it.
        return timm.create_model(TIMM_NAMES[name], pretrained=False, num_classes=20, drop_rate=0.2)
    raise SystemExit(f"torch_compare.py: no PyTorch version of '{name}' (have mobilenet_v2, deeplabv3, deeplabv3plus, "
                     f"{', '.join(TIMM_NAMES)})")


# voc's --model names of the timm ports, and timm's.
TIMM_NAMES = {"resnet50": "resnet50", "resnet50v2": "resnetv2_50", "vgg16": "vgg16"}


def MobileDeepLabV3(torch, nn, F, torchvision):
    """voc's DeepLabV3 (transformers' deeplabv3_mobilenet_v2 layout) on torchvision's MobileNetV2."""

    def conv_bn_relu(c_in, c_out):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            features = torchvision.models.mobilenet_v2(weights=None).features[:-1]
            # Output stride 16: the stride-2 block of the 160-channel stage keeps stride 1, and the blocks
            # after it dilate their depthwise 3x3 by 2 (as voc's and transformers' schedule does).
            for index, block in enumerate(features):
                if index < 14:
                    continue
                for m in block.modules():
                    if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                        if index == 14:
                            m.stride = (1, 1)
                        else:
                            m.dilation, m.padding = (2, 2), (2, 2)
            self.backbone = features
            self.conv_pool = conv_bn_relu(320, 256)
            self.conv_aspp = conv_bn_relu(320, 256)
            self.conv_projection = conv_bn_relu(512, 256)
            self.classifier = nn.Conv2d(256, 21, 1)

        def forward(self, x):
            h, w = x.shape[-2:]
            f = self.backbone(x)
            pooled = self.conv_pool(F.adaptive_avg_pool2d(f, 1)).expand(-1, -1, f.shape[2], f.shape[3])
            y = self.conv_projection(torch.cat([pooled, self.conv_aspp(f)], 1))
            return F.interpolate(self.classifier(y), size=(h, w), mode="bilinear", align_corners=True)

    return Net()


def MobileDeepLabV3Plus(torch, nn, F, torchvision):
    """voc's DeepLabV3+ (the `decode_head.*` of shared/README.md) on torchvision's MobileNetV2 at output
    stride 16: ASPP 1x1 + atrous 6/12/18 + image pooling (256 each), projection, the stride-4 features of
    layer.1 (= features[3], 24 -> 48), two 3x3 decoder convs, 1x1 classifier, bilinear up to the input
    (align_corners=False throughout)."""

    def cbr(c_in, c_out, k=1, d=1):
        return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=d * (k // 2), dilation=d, bias=False),
                             nn.BatchNorm2d(c_out), nn.ReLU())

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            features = MobileDeepLabV3(torch, nn, F, torchvision).backbone
            self.low = features[:4]
            self.high = features[4:]
            self.aspp_1x1 = cbr(320, 256)
            self.aspp_atrous = nn.ModuleList([cbr(320, 256, 3, d) for d in (6, 12, 18)])
            self.aspp_pool = cbr(320, 256)
            self.aspp_projection = cbr(1280, 256)
            self.low_level = cbr(24, 48)
            self.decoder = nn.Sequential(cbr(304, 256, 3), cbr(256, 256, 3))
            self.classifier = nn.Conv2d(256, 21, 1)

        def forward(self, x):
            h, w = x.shape[-2:]
            low = self.low(x)
            f = self.high(low)
            pooled = F.interpolate(self.aspp_pool(F.adaptive_avg_pool2d(f, 1)), size=f.shape[-2:],
                                   mode="bilinear", align_corners=False)
            branches = [self.aspp_1x1(f)] + [b(f) for b in self.aspp_atrous] + [pooled]
            y = self.aspp_projection(torch.cat(branches, 1))
            y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
            y = self.decoder(torch.cat([y, self.low_level(low)], 1))
            return F.interpolate(self.classifier(y), size=(h, w), mode="bilinear", align_corners=False)

    return Net()


# voc counts `--unfreeze` blocks in transformers' MobileNetV2 naming (what the hub weights use), stem first:
#   block 0       mobilenet_v2.conv_stem (first_conv + the t=1 inverted residual) = torchvision features[0..1]
#   blocks 1..16  mobilenet_v2.layer.0..15                                        = torchvision features[2..17]
#                 (layer.N = features[N + 2]; layer.12 / features[14] is the stride-2 96 -> 160 block)
#   always        mobilenet_v2.conv_1x1 (1280-channel widening conv)              = torchvision features[18]
#   always        classifier                                                      = torchvision classifier
# So `--unfreeze 5` trains layer.11..15 + conv_1x1 = features[13..18] (features[:-6] frozen), 17 or `all`
# trains everything. The trainable conv weights of the two then have the same shapes (1,779,136 values for
# K = 5, checked against google/mobilenet_v2_1.0_224's names).
MOBILENET_V2_BLOCKS = 17


def finetune_start(unfreeze):
    """Index of the first trainable module of torchvision's mobilenet_v2 `features` for voc's --unfreeze."""
    if unfreeze == "all":
        return 0
    k = int(unfreeze)
    if not 1 <= k <= MOBILENET_V2_BLOCKS:
        raise SystemExit(f"--unfreeze {k}: mobilenet_v2 has {MOBILENET_V2_BLOCKS} blocks (stem included)")
    # features[18 - k .. 17] are the last k blocks while they stay inside layer.0..15; all 17 take the stem.
    return 0 if k == MOBILENET_V2_BLOCKS else 18 - k


def run_bench(args):
    if args.engine == "ort":
        return run_bench_ort(args)
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torchvision

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(args.seed)
    if args.unfreeze is not None and not args.train:
        raise SystemExit("--unfreeze times a fine-tuning step: it needs --train")
    if args.features and args.train:
        raise SystemExit("--features times the frozen feature pass (inference): not with --train")
    if args.unfreeze is not None and args.model != "mobilenet_v2":
        raise SystemExit("--unfreeze: mobilenet_v2 only")
    if args.features and args.model in SEGMENTERS:
        raise SystemExit("--features: classifiers only")
    size = args.size or (513 if args.model in SEGMENTERS else 224)
    device = torch.device(args.device)
    model = build_model(args.model, torch, nn, F, torchvision).to(device)
    x = torch.randn(args.batch, 3, size, size, device=device)
    if args.model in SEGMENTERS:
        u = torch.rand(args.batch, size, size, device=device)
        target = torch.where(u >= 0.95, torch.full_like(u, 255), (u / 0.95 * 21).floor().clamp(max=20)).long()
        loss_fn = lambda logits: F.cross_entropy(logits, target, ignore_index=255)
    else:
        target = (torch.rand(args.batch, 20, device=device) < 0.1).float()
        loss_fn = lambda logits: F.binary_cross_entropy_with_logits(logits, target)

    if args.train and args.unfreeze is not None:
        start = finetune_start(args.unfreeze)
        model.train()  # dropout on, as voc's fine-tuning step has it
        for p in model.parameters():
            p.requires_grad_(False)
        head, backbone = list(model.classifier.parameters()), []
        for m in model.features[start:].modules():
            if isinstance(m, nn.Conv2d):
                backbone += list(m.parameters(recurse=False))
        for p in head + backbone:
            p.requires_grad_(True)
        # Frozen batch norm: running statistics, no updates, scale and shift stay constants.
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()

        def groups(params, lr):
            return [{"params": [p for p in params if p.dim() > 1], "lr": lr, "weight_decay": 1e-4},
                    {"params": [p for p in params if p.dim() <= 1], "lr": lr, "weight_decay": 0.0}]

        opt = torch.optim.AdamW([g for g in groups(head, 1e-3) + groups(backbone, 1e-4) if g["params"]])

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x))
            loss.backward()
            opt.step()
    elif args.features:
        model.eval()

        def step():
            with torch.inference_mode():
                if args.model in TIMM_NAMES:
                    model.forward_head(model.forward_features(x), pre_logits=True)
                else:
                    F.adaptive_avg_pool2d(model.features(x), 1).flatten(1)
    elif args.train:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=4e-5)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x))
            loss.backward()
            opt.step()
    else:
        model.eval()

        def step():
            with torch.inference_mode():
                model(x)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        step()
    samples = []
    for _ in range(args.iters):
        sync()
        start = time.perf_counter()
        step()
        sync()
        samples.append((time.perf_counter() - start) * 1e3)
    median = statistics.median(samples)
    report = {
        "model": args.model,
        "device": "cpu" if device.type == "cpu" else f"cuda:{device.index or 0}",
        "batch": args.batch,
        "size": size,
        "train": bool(args.train),
        "unfreeze": args.unfreeze,
        "features": bool(args.features),
        "median_ms": median,
        "min_ms": min(samples),
        "max_ms": max(samples),
        "images_per_s": args.batch * 1e3 / median,
        "peak_rss_mb": peak_rss_mb(),
    }
    if args.json:
        print(json.dumps(report))
    else:
        if args.unfreeze is not None:
            what = f"fine-tune step (unfreeze {args.unfreeze}, frozen batch norm, AdamW)"
        elif args.features:
            what = "frozen feature pass"
        else:
            what = "training step" if args.train else "inference"
        print(
            f"torch {args.model} {what}, batch {args.batch} at {size}x{size} ({args.threads} threads): "
            f"median {median:.2f} ms/batch (min {min(samples):.2f}, max {max(samples):.2f} over "
            f"{args.iters} iterations), {report['images_per_s']:.1f} images/s, "
            f"peak RSS {report['peak_rss_mb']:.0f} MiB"
        )


def run_bench_ort(args):
    """The inference workload in ONNX Runtime: the same PyTorch twin exported with torch.onnx.export (opset
    17, constant folding, so eval-mode batch norm is folded as ORT's optimiser would fold it anyway), run
    by an InferenceSession on the CPU with every graph optimisation, `intra_op_num_threads=--threads` and
    one inter-op thread."""
    import tempfile

    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime as ort
    except ImportError:
        raise SystemExit("torch_compare.py: --engine ort needs onnx and onnxruntime (pip install onnx onnxruntime); "
                         "`compare --no-ort` leaves ONNX Runtime out")
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torchvision

    if args.train:
        raise SystemExit("--engine ort times inference only (no --train)")
    torch.manual_seed(args.seed)
    size = args.size or (513 if args.model in SEGMENTERS else 224)
    model = build_model(args.model, torch, nn, F, torchvision).eval()
    if args.features:
        if args.model in SEGMENTERS:
            raise SystemExit("--features: classifiers only")
        class Pooled(nn.Module):
            def __init__(self, full):
                super().__init__()
                self.full = full  # a submodule, so that its weights export as weights

            def forward(self, x):
                if args.model in TIMM_NAMES:
                    return self.full.forward_head(self.full.forward_features(x), pre_logits=True)
                return F.adaptive_avg_pool2d(self.full.features(x), 1).flatten(1)

        model = Pooled(model).eval()
    x = torch.randn(args.batch, 3, size, size)
    with tempfile.TemporaryDirectory(prefix="voc-ort-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter (dynamo=False) is deprecated but needs no onnxscript.
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), path, opset_version=17, input_names=["x"], output_names=["y"],
                              do_constant_folding=True, dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    for _ in range(args.warmup):
        session.run(None, feed)
    samples = []
    for _ in range(args.iters):
        start = time.perf_counter()
        session.run(None, feed)
        samples.append((time.perf_counter() - start) * 1e3)
    median = statistics.median(samples)
    report = {
        "model": args.model, "device": "cpu", "engine": f"onnxruntime {ort.__version__}", "batch": args.batch,
        "size": size, "train": False, "unfreeze": None, "features": bool(args.features), "median_ms": median,
        "min_ms": min(samples), "max_ms": max(samples), "images_per_s": args.batch * 1e3 / median,
        "peak_rss_mb": peak_rss_mb(),
    }
    if args.json:
        print(json.dumps(report))
    else:
        what = "frozen feature pass" if args.features else "inference"
        print(f"onnxruntime {args.model} {what}, batch {args.batch} at {size}x{size} ({args.threads} threads): "
              f"median {median:.2f} ms/batch (min {min(samples):.2f}, max {max(samples):.2f} over {args.iters} "
              f"iterations), {report['images_per_s']:.1f} images/s, peak RSS {report['peak_rss_mb']:.0f} MiB")


# (name, voc bench arguments, time target, memory target, ONNX Runtime time target): the acceptance
# workloads of issue 6, then the classifier trainer's (fine-tuning step of the last 5 blocks, frozen
# feature pass; no target set). Inference rows also run in ONNX Runtime (issue 17's targets).
WORKLOADS = [
    ("mobilenet_v2 224 inference b16", ["--model", "mobilenet_v2", "--size", "224", "--batch", "16"], 1.0, None, 1.0),
    ("mobilenet_v2 224 inference b1", ["--model", "mobilenet_v2", "--size", "224", "--batch", "1"], 1.2, None, 1.0),
    ("deeplabv3 513 inference b1", ["--model", "deeplabv3", "--size", "513", "--batch", "1"], 1.0, None, 1.0),
    # Issue 13's target: the DeepLabV3+ training step at the notebook's crop.
    ("deeplabv3plus 321 train step b8",
     ["--model", "deeplabv3plus", "--size", "321", "--batch", "8", "--train"], 1.0, 1.0, None),
    ("mobilenet_v2 224 train step b8", ["--model", "mobilenet_v2", "--size", "224", "--batch", "8", "--train"], 1.5, 1.5,
     None),
    ("mobilenet_v2 224 finetune b16",
     ["--model", "mobilenet_v2", "--size", "224", "--batch", "16", "--train", "--unfreeze", "5"], None, None, None),
    ("mobilenet_v2 224 features b16",
     ["--model", "mobilenet_v2", "--size", "224", "--batch", "16", "--features"], None, None, None),
    # The notebook's other transfer backbones (timm's resnet50, resnetv2_50, vgg16 on the PyTorch side).
    *[row for model in TIMM_NAMES for row in (
        (f"{model} 224 inference b16", ["--model", model, "--size", "224", "--batch", "16"], 1.0, None, None),
        (f"{model} 224 train step b8", ["--model", model, "--size", "224", "--batch", "8", "--train"], None, None,
         None),
    )],
]


def run_json(cmd, env):
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr}")
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if len(lines) != 1:
        raise SystemExit(f"{' '.join(cmd)}: expected one JSON line, got:\n{out.stdout}")
    return json.loads(lines[0])


def run_compare(args):
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    if args.omp_passive:
        # OpenMP threads that spin while waiting lose badly when other processes share the cores; passive
        # waiting is PyTorch's best case on a loaded machine (and costs it a little on a quiet one).
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    selected = [w for w in WORKLOADS if not args.only or any(s in w[0] for s in args.only)]
    if not selected:
        raise SystemExit(f"--only {args.only}: matches none of {[w[0] for w in WORKLOADS]}")
    rows = []
    for name, voc_args, time_target, mem_target, ort_target in selected:
        iters = ["--iters", str(args.iters), "--warmup", str(args.warmup), "--json"]
        voc_cmd = [args.voc, "bench", "--device", "cpu", *voc_args, *iters]
        torch_cmd = [args.torch_python, os.path.abspath(__file__), "bench", "--threads", str(args.threads),
                     *voc_args, *iters]
        sides = [("voc", voc_cmd), ("torch", torch_cmd)]
        if "--train" not in voc_args and not args.no_ort:
            sides.append(("ort", [*torch_cmd, "--engine", "ort"]))
        runs = {side: [] for side, _ in sides}
        for r in range(args.rounds):
            # Each round starts with another engine, so none always runs on a warmer or quieter machine.
            order = sides[r % len(sides):] + sides[:r % len(sides)]
            for side, cmd in order:
                result = run_json(cmd, env)
                result["load_average"] = os.getloadavg()[0]
                runs[side].append(result)
                print(f"  {name} round {r + 1} {side}: {result['median_ms']:.1f} ms, "
                      f"{result['peak_rss_mb']:.0f} MiB, load {result['load_average']:.2f}", file=sys.stderr,
                      flush=True)
        voc_ms = statistics.median(x["median_ms"] for x in runs["voc"])
        torch_ms = statistics.median(x["median_ms"] for x in runs["torch"])
        voc_mb = statistics.median(x["peak_rss_mb"] for x in runs["voc"])
        torch_mb = statistics.median(x["peak_rss_mb"] for x in runs["torch"])
        ort_ms = statistics.median(x["median_ms"] for x in runs["ort"]) if runs.get("ort") else None
        rows.append({
            "workload": name, "voc_ms": voc_ms, "torch_ms": torch_ms, "time_ratio": voc_ms / torch_ms,
            "time_target": time_target, "voc_peak_rss_mb": voc_mb, "torch_peak_rss_mb": torch_mb,
            "memory_ratio": voc_mb / torch_mb, "memory_target": mem_target,
            "ort_ms": ort_ms, "ort_ratio": voc_ms / ort_ms if ort_ms else None, "ort_target": ort_target,
            "voc_runs_ms": [x["median_ms"] for x in runs["voc"]],
            "torch_runs_ms": [x["median_ms"] for x in runs["torch"]],
            "ort_runs_ms": [x["median_ms"] for x in runs.get("ort", [])],
        })

    def verdict(ratio, target):
        if target is None:
            return ""
        return f"<= {target:.1f}x {'met' if ratio <= target else 'MISSED'}"

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.rounds} interleaved rounds, {args.iters} timed iterations each after {args.warmup} warm-up, "
          f"{args.threads} threads{', PyTorch with OMP_WAIT_POLICY=PASSIVE' if args.omp_passive else ''}; "
          f"medians of the per-run medians; 1-minute load average at the end {load:.2f}")
    print("| workload | voc ms | PyTorch ms | voc/PyTorch | time target | ONNX Runtime ms | voc/ORT | ORT target "
          "| voc peak MiB | PyTorch peak MiB | memory ratio | memory target |")
    print("|---|---:|---:|---:|---|---:|---:|---|---:|---:|---:|---|")
    for row in rows:
        ort = (f"{row['ort_ms']:.1f} | {row['ort_ratio']:.2f}x | {verdict(row['ort_ratio'], row['ort_target'])}"
               if row["ort_ms"] else " |  | ")
        print(f"| {row['workload']} | {row['voc_ms']:.1f} | {row['torch_ms']:.1f} | {row['time_ratio']:.2f}x "
              f"| {verdict(row['time_ratio'], row['time_target'])} | {ort} | {row['voc_peak_rss_mb']:.0f} "
              f"| {row['torch_peak_rss_mb']:.0f} | {row['memory_ratio']:.2f}x "
              f"| {verdict(row['memory_ratio'], row['memory_target'])} |")
    if args.out:
        tmp = f"{args.out}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"rounds": args.rounds, "iters": args.iters, "threads": args.threads,
                   "omp_passive": args.omp_passive, "load_average": load, "rows": rows}, f,
                      indent=1)
        os.replace(tmp, args.out)
        print(f"wrote {args.out}", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    b = sub.add_parser("bench", help="time one workload in PyTorch")
    b.add_argument("--model", default="mobilenet_v2", choices=["mobilenet_v2", "deeplabv3", "deeplabv3plus", *TIMM_NAMES])
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--size", type=int, default=None)
    b.add_argument("--train", action="store_true")
    b.add_argument("--unfreeze", default=None, metavar="K|all",
                   help="with --train: fine-tune the last K blocks (or all) with frozen batch norm and AdamW")
    b.add_argument("--features", action="store_true", help="time the frozen feature pass (pooled features)")
    b.add_argument("--iters", type=int, default=10)
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--device", default="cpu")
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json", action="store_true")
    b.add_argument("--engine", choices=["torch", "ort"], default="torch",
                   help="PyTorch eager, or ONNX Runtime on the exported twin (inference only)")
    c = sub.add_parser("compare", help="voc bench and PyTorch interleaved, table of ratios")
    c.add_argument("--voc", default="target/release/voc", help="the voc binary (release build)")
    c.add_argument("--torch-python", default=sys.executable, help="python with torch and torchvision")
    c.add_argument("--rounds", type=int, default=3)
    c.add_argument("--iters", type=int, default=10)
    c.add_argument("--warmup", type=int, default=2)
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--only", nargs="*", help="run only workloads whose name contains one of these")
    c.add_argument("--out", help="also write the rows as JSON here")
    c.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime column")
    c.add_argument("--omp-passive", action="store_true",
                   help="run PyTorch with OMP_WAIT_POLICY=PASSIVE (fairer to it when the machine is shared)")
    args = parser.parse_args()
    if args.mode == "bench":
        if args.batch < 1 or args.iters < 1:
            raise SystemExit("--batch and --iters must be at least 1")
        run_bench(args)
    else:
        run_compare(args)


if __name__ == "__main__":
    main()
