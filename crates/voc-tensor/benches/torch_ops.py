"""PyTorch twin of benches/ops.rs: the same ops, shapes and `sum(y * g)` backward, on 2 CPU threads.

Run right after `RAYON_NUM_THREADS=2 cargo bench -p voc-tensor`, in the same session:
    path/to/python crates/voc-tensor/benches/torch_ops.py
Prints the median time of each case in milliseconds (median of 20 timed runs after 3 warm-up runs).
"""
import statistics
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(2)
torch.manual_seed(0)


def median_ms(fn, warmup=3, runs=20):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def fwd_bwd(make_y, inputs, g):
    def step():
        for t in inputs:
            t.grad = None
        (make_y() * g).sum().backward()

    return step


def main():
    rows = []
    x = torch.randn(8, 144, 56, 56, requires_grad=True)
    w = (torch.randn(144, 1, 3, 3) * 0.1).requires_grad_()
    b = torch.randn(144, requires_grad=True)
    for stride in (1, 2):
        out = (56 - 1) // stride + 1
        g = torch.randn(8, 144, out, out)
        make_y = lambda s=stride: F.conv2d(x, w, b, stride=s, padding=1, groups=144)
        rows.append((f"depthwise_conv2d 8x144x56x56 3x3 stride {stride} fwd+bwd", median_ms(fwd_bwd(make_y, [x, w, b], g))))
        with torch.no_grad():
            rows.append((f"depthwise_conv2d 8x144x56x56 3x3 stride {stride} fwd", median_ms(make_y)))

    xr = torch.randn(1, 21, 65, 65, requires_grad=True)
    gr = torch.randn(1, 21, 513, 513)
    make_r = lambda: F.interpolate(xr, size=(513, 513), mode="bilinear", align_corners=True)
    rows.append(("resize_bilinear 1x21x65x65 -> 513x513 align_corners fwd+bwd", median_ms(fwd_bwd(make_r, [xr], gr))))
    with torch.no_grad():
        rows.append(("resize_bilinear 1x21x65x65 -> 513x513 align_corners fwd", median_ms(make_r)))

    xc = torch.randn(2, 256, 33, 33, requires_grad=True)
    wc = (torch.randn(256, 256, 3, 3) * 0.02).requires_grad_()
    gc = torch.randn(2, 256, 33, 33)
    make_c = lambda: F.conv2d(xc, wc, None, padding=6, dilation=6)
    rows.append(("conv2d 2x256x33x33 -> 256 3x3 dilation 6 fwd+bwd", median_ms(fwd_bwd(make_c, [xc, wc], gc))))
    with torch.no_grad():
        rows.append(("conv2d 2x256x33x33 -> 256 3x3 dilation 6 fwd", median_ms(make_c)))

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for name, ms in rows:
        print(f"{name:<66} {ms:8.2f} ms")


if __name__ == "__main__":
    main()
