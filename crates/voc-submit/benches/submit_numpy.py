#!/usr/bin/env python3
"""The numpy side of `cargo bench -p voc-submit`: the same 750 synthetic 375x500 masks encoded into a
submission with the competition's style of numpy encoder, for images/s side by side with the Rust bench.

    python crates/voc-submit/benches/submit_numpy.py [--images 750] [--repeat 3] [--out FILE]

The masks come from the same integer-only generator as benches/encode_submission.rs, so the submission
written with --out equals the one the bench writes with VOC_SUBMIT_BENCH_CSV=FILE byte for byte.
"""
import argparse
import time

import numpy as np

HEIGHT, WIDTH = 375, 500
MASK64 = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.state = seed

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)


def synthetic_mask(seed):
    """1 to 3 ellipses of random classes with a 4-pixel void (255) rim; later ones paint over earlier."""
    rng = SplitMix64(seed)
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    for _ in range(1 + rng.next() % 3):
        cls = 1 + rng.next() % 20
        cy = rng.next() % HEIGHT
        cx = rng.next() % WIDTH
        ry = 15 + rng.next() % (HEIGHT // 3)
        rx = 15 + rng.next() % (WIDTH // 3)
        iry, irx = ry - 4, rx - 4
        y0, y1 = max(cy - ry, 0), min(cy + ry, HEIGHT - 1)
        x0, x1 = max(cx - rx, 0), min(cx + rx, WIDTH - 1)
        dy = np.arange(y0, y1 + 1, dtype=np.int64)[:, None] - cy
        dx = np.arange(x0, x1 + 1, dtype=np.int64)[None, :] - cx
        inner = dy * dy * irx * irx + dx * dx * iry * iry <= irx * irx * iry * iry
        outer = dy * dy * rx * rx + dx * dx * ry * ry <= rx * rx * ry * ry
        window = mask[y0 : y1 + 1, x0 : x1 + 1]
        window[outer & ~inner] = 255
        window[inner] = cls
    return mask


def rle_encode(array):
    """The competition's numpy run-length encoder: 1-based starts and lengths of the runs of ones."""
    pixels = array.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def encode_submission(images):
    lines = ["Id,Predicted"]
    for image_id, labels, mask in images:
        lines.append(f"{image_id}_classification,{rle_encode(labels)}")
        stack = np.stack([mask == c + 1 for c in range(20)]).astype(np.uint8)
        lines.append(f"{image_id}_segmentation,{rle_encode(stack)}")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=750)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs; the fastest is reported")
    parser.add_argument("--out", help="write the submission here")
    args = parser.parse_args()

    images = []
    for i in range(args.images):
        mask = synthetic_mask(i)
        labels = np.array([int((mask == c + 1).any()) for c in range(20)], dtype=np.uint8)
        images.append((str(i), labels, mask))

    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        text = encode_submission(images)
        times.append(time.perf_counter() - start)
    best = min(times)
    print(
        f"numpy {np.__version__}: {args.images} masks {HEIGHT}x{WIDTH} in {best:.3f} s (best of {args.repeat}) "
        f"= {args.images / best:.1f} images/s, {len(text)} bytes"
    )
    if args.out:
        with open(args.out, "w", newline="") as f:
            f.write(text)


if __name__ == "__main__":
    main()
