#!/usr/bin/env python3
"""Inference speed of the PyTorch versions of voc's networks, for `benches/inference.rs`.

    python benches/torch_infer.py --model deeplabv3_mobilenet_v2 --batch 16 --size 513 --iters 3

prints one JSON line: model, batch, size, threads, iters, median_ms, min_ms, images_per_s (from the median).

The networks, in eval mode under `torch.inference_mode()`, eager NCHW float32 (PyTorch as it is
usually run on a CPU), with `torch.set_num_threads(--threads)`:
  * mobilenet_v2: torchvision's MobileNetV2 1.0 (1000 classes; voc's has the 1001 of the TF model).
  * deeplabv3_mobilenet_v2: the transformers DeepLabV3-MobileNetV2 network voc ports, built here on
    torchvision's MobileNetV2 features (without the final 1280-channel conv): output stride 16 (the
    stride-2 block of the 160-channel stage runs at stride 1, later depthwise convs dilated by 2), the
    image-pooling and 1x1 branches (256 channels, batch norm, ReLU), the projection, the 21-class
    classifier, and the logits upsampled bilinearly (align_corners=True) to the input size.
    torchvision pads symmetrically where the TF model pads "SAME"; the arithmetic is the same.
Weights are random: speed does not depend on them. Inputs are uniform in [-1, 1].
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision


class DeepLabV3MobileNetV2(nn.Module):
    def __init__(self, num_classes=21, channels=256):
        super().__init__()
        features = torchvision.models.mobilenet_v2(weights=None).features[:-1]
        for index in range(14, len(features)):
            for m in features[index].modules():
                if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                    if index == 14:
                        m.stride = (1, 1)
                    else:
                        m.dilation, m.padding = (2, 2), (2, 2)
        self.backbone = features

        def branch(c_in):
            return nn.Sequential(nn.Conv2d(c_in, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU())

        self.conv_pool = branch(320)
        self.conv_aspp = branch(320)
        self.conv_projection = branch(2 * channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
        h, w = x.shape[-2:]
        f = self.backbone(x)
        pooled = self.conv_pool(F.adaptive_avg_pool2d(f, 1)).expand(-1, -1, f.shape[2], f.shape[3])
        y = self.conv_projection(torch.cat([pooled, self.conv_aspp(f)], 1))
        return F.interpolate(self.classifier(y), size=(h, w), mode="bilinear", align_corners=True)


def build(name):
    if name == "mobilenet_v2":
        return torchvision.models.mobilenet_v2(weights=None)
    if name == "deeplabv3_mobilenet_v2":
        return DeepLabV3MobileNetV2()
    raise SystemExit(f"torch_infer.py: unknown model '{name}' (mobilenet_v2, deeplabv3_mobilenet_v2)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = build(args.model).eval()
    x = torch.rand(args.batch, 3, args.size, args.size) * 2 - 1
    samples = []
    with torch.inference_mode():
        for i in range(args.warmup + args.iters):
            start = time.perf_counter()
            model(x)
            if i >= args.warmup:
                samples.append(time.perf_counter() - start)
    median = statistics.median(samples)
    print(json.dumps({
        "model": args.model,
        "batch": args.batch,
        "size": args.size,
        "threads": torch.get_num_threads(),
        "iters": args.iters,
        "median_ms": median * 1e3,
        "min_ms": min(samples) * 1e3,
        "images_per_s": args.batch / median,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
