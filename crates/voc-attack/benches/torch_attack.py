#!/usr/bin/env python3
"""The work of `cargo bench -p voc-attack` in PyTorch: forward in eval mode and the gradient of the loss
with respect to the input, for MobileNetV2 at 224 (batch 1 and 8, 1001 classes, cross-entropy) and
DeepLabV3 at 257 (batch 1, cross-entropy of the logits upsampled to the input against an all-background
mask). Random constant weights, pixels u in [0, 1) fed as u * 2 - 1, `torch.set_num_threads(2)`.

    RAYON_NUM_THREADS=2 python crates/voc-attack/benches/torch_attack.py [--iters 20]

Prints the median ms of each workload, with the names criterion gives voc's.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "benches"))
from torch_compare import MobileDeepLabV3  # noqa: E402  (the network torch_compare.py times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torchvision

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    def time_gradient(name, model, u, loss_of):
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()

        def step():
            x = u.clone().requires_grad_(True)
            loss = loss_of(model(x * 2 - 1))
            (grad,) = torch.autograd.grad(loss, x)
            return grad

        for _ in range(args.warmup):
            step()
        times = []
        for _ in range(args.iters):
            start = time.perf_counter()
            step()
            times.append((time.perf_counter() - start) * 1000)
        print(f"{name}: median {statistics.median(times):.2f} ms (min {min(times):.2f}, max {max(times):.2f})")

    classifier = torchvision.models.mobilenet_v2(weights=None, num_classes=1001)
    for batch in (1, 8):
        target = torch.full((batch,), 20, dtype=torch.long)
        time_gradient(f"attack step MobileNetV2 224/batch {batch} input gradient", classifier,
                      torch.rand(batch, 3, 224, 224), lambda logits: F.cross_entropy(logits, target))
    segmenter = MobileDeepLabV3(torch, nn, F, torchvision)
    mask = torch.zeros(1, 257, 257, dtype=torch.long)
    time_gradient("attack step DeepLabV3 257/batch 1 input gradient", segmenter, torch.rand(1, 3, 257, 257),
                  lambda logits: F.cross_entropy(logits, mask))


if __name__ == "__main__":
    main()
