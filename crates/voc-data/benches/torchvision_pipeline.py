"""The voc-data batch pipeline in torchvision.transforms.v2, for `cargo bench -p voc-data`.

Reads the competition layout written by benches/pipeline.rs (DIR/train/img/train_{Id}.npy, seg/...),
applies the same augmentation and batches with a DataLoader (2 workers, torch.set_num_threads(2)), and
prints images/s over --epochs epochs after one warm-up epoch.

classification 224: letterbox to 224 (Resize longer side + CenterCrop pads), RandomHorizontalFlip,
  RandomAffine(20 deg, shear 0.2 ~ 11.3 deg, scale 0.8-1.2, translate 5%), ColorJitter(0.2, 0.2, 0.2),
  ToDtype float32 + ImageNet Normalize; masks follow (nearest, fill 255).
segmentation 512: RandomAffine(10 deg, scale 0.5-2.0), RandomCrop(512, pad_if_needed, fill 0 / mask 255),
  RandomHorizontalFlip, ColorJitter(0.2, 0.2, 0.2), ToDtype + Normalize.
"""
import argparse
import math
import os
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


class NpySegmentation(Dataset):
    def __init__(self, root, transform):
        split = os.path.join(root, "train")
        with open(os.path.join(split, "train_set.csv")) as f:
            rows = [line.strip().split(",") for line in f if line.strip()]
        self.ids = [r[0] for r in rows[1:]]
        self.labels = torch.tensor([[float(v) for v in r[1:]] for r in rows[1:]])
        self.split = split
        self.transform = transform

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        image = np.load(os.path.join(self.split, "img", f"train_{self.ids[i]}.npy"))
        mask = np.load(os.path.join(self.split, "seg", f"train_{self.ids[i]}.npy"))
        image = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(mask))
        image, mask = self.transform(image, mask)
        return image, self.labels[i], mask


def pipeline(task, size):
    fill = {tv_tensors.Image: 0, tv_tensors.Mask: 255}
    if task == "classification":
        return v2.Compose([
            v2.Resize(size - 1, max_size=size),
            v2.CenterCrop(size),
            v2.RandomHorizontalFlip(),
            v2.RandomAffine(degrees=20, translate=(0.05, 0.05), scale=(0.8, 1.2),
                            shear=math.degrees(math.atan(0.2)), fill=fill),
            v2.ColorJitter(0.2, 0.2, 0.2),
            v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
            v2.Normalize(MEAN, STD),
        ])
    return v2.Compose([
        v2.RandomAffine(degrees=10, scale=(0.5, 2.0), fill=fill),
        v2.RandomCrop(size, pad_if_needed=True, fill=fill),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(0.2, 0.2, 0.2),
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
        v2.Normalize(MEAN, STD),
    ])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--task", choices=["classification", "segmentation"], default="classification")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    data = NpySegmentation(args.data, pipeline(args.task, args.size))
    loader = DataLoader(data, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                        persistent_workers=args.workers > 0)
    for images, labels, masks in loader:  # warm-up epoch: starts the workers
        pass
    start = time.perf_counter()
    n = 0
    for _ in range(args.epochs):
        for images, labels, masks in loader:
            assert images.shape[1:] == (3, args.size, args.size) and masks.shape[1:] == (args.size, args.size)
            n += images.shape[0]
    elapsed = time.perf_counter() - start
    print(f"images_per_s={n / elapsed:.2f}")


if __name__ == "__main__":
    main()
