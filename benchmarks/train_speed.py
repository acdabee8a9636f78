"""Training throughput at 224 px: the project's loop vs the seed work's loop vs the model's compute alone.

    python benchmarks/train_speed.py --device cuda|cpu [--models resnet18,efficientnetv2_s] [--images 512]
                                     [--batch 64] [--size 224] [--data ../shared/data]

For each model, with AMP + channels_last off (fp32) and on (fp16 on CUDA, bf16 on CPUs with native bf16, else fp32
+ channels_last), train images/s of one epoch over the same images by:

* ``lungxray``: the train stage's loop (:func:`lungxray.train_loop.run_epoch`: uint8 memmap -> background thread ->
  pinned memory -> ``non_blocking`` copy, normalisation and augmentation on the device, loss summed on the device);
* ``ImageFolder``: torchvision ImageFolder + PIL decode + transforms + DataLoader (best of 0 and all-core workers,
  pinned memory on CUDA) over the same images written as PNG files to a temporary folder;
* ``compute``: forward + backward + step on one synthetic batch already on the device: the rate no input path can
  beat. The ratio lungxray / compute is the share of time the device does not wait for data (target >= 0.9 on a GPU).

Images: the real X-rays of ``--data`` (preprocessed to ``--size``) when present, else synthetic ones. Models start
from random weights (speed does not depend on them). Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from lungxray.augment import AugmentParams
from lungxray.models import create_model
from lungxray.preprocess import PreprocessParams, load_split, run_preprocess
from lungxray.train_loop import ArrayBatches, resolve_precision, run_epoch


def real_images(root: Path, n: int, size: int, work: Path) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    rows = [{"path": str(p), "label": p.parent.name} for folder in ("jtiptj_test", "skytells_covid19_xray/NonAugmentedTrain")
            if (root / folder).is_dir() for p in sorted((root / folder).rglob("*"))
            if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    if not rows:
        return None
    df = pd.DataFrame(rows).sample(n=min(n, len(rows)), random_state=0).reset_index(drop=True)
    split = pd.DataFrame({"id": [str(i) for i in range(len(df))], "path": df.path, "label": df.label,
                          "split": "train", "source": "bench"})
    classes = sorted(df.label.unique())
    run_preprocess(split, classes, PreprocessParams(image_size=size, aspect="stretch"), work / "processed",
                   progress=False)
    x, y = load_split(work / "processed", "train")
    return np.asarray(x), np.asarray(y), classes


def synthetic_images(n: int, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size), dtype=np.uint8), np.arange(n) % 3, ["a", "b", "c"]


def write_pngs(x: np.ndarray, y: np.ndarray, classes: list[str], dest: Path) -> None:
    """The same images as PNG files in ImageFolder's layout (one sub-folder per class)."""
    for i, (img, label) in enumerate(zip(x, y)):
        (dest / classes[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(dest / classes[label] / f"{i:05d}.png")


def timed(device: torch.device, fn) -> float:
    """Seconds ``fn`` takes, the device's queued work included."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def folder_epoch(model, loader, device, opt, loss_fn, amp, channels_last) -> int:
    model.train()
    n = 0
    for x, y in loader:
        x = x.to(device, non_blocking=True).contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = loss_fn(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(y)
    return n


def compute_steps(model, x, y, steps, opt, loss_fn, amp) -> None:
    model.train()
    for _ in range(steps):
        with torch.autocast(device_type=x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = loss_fn(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def bench_model(name: str, data, folder: Path, args, device: torch.device) -> list[dict]:
    from torchvision import datasets, transforms

    x, y, classes = data
    tf = transforms.Compose([transforms.Grayscale(num_output_channels=3),
                             transforms.RandomAffine(5, translate=(0.05, 0.05), scale=(0.95, 1.05)),
                             transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.25] * 3)])
    folder_ds = datasets.ImageFolder(str(folder), transform=tf)
    cores, out = os.cpu_count() or 1, []
    for amp, cl in ((None, False), (resolve_precision("auto", device), True)):
        torch.manual_seed(0)
        model = create_model(name, num_classes=len(classes), pretrained=False).to(device)
        model = model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, **({"fused": True} if device.type == "cuda" else {}))
        loss_fn, aug = nn.CrossEntropyLoss(), AugmentParams()

        def ours():
            g = torch.Generator().manual_seed(0)
            run_epoch(model, ArrayBatches(x, y, args.batch, "shuffle", g, pin_memory=device.type == "cuda"), device,
                      loss_fn, opt, amp, cl, [0.5] * 3, [0.25] * 3, augment=aug, generator=g)

        def baseline(workers):
            loader = DataLoader(folder_ds, batch_size=args.batch, shuffle=True, num_workers=workers,
                                pin_memory=device.type == "cuda")
            return lambda: folder_epoch(model, loader, device, opt, loss_fn, amp, cl)

        xs = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(
            memory_format=torch.channels_last if cl else torch.contiguous_format)
        ys = torch.arange(args.batch, device=device) % len(classes)
        steps = -(-len(y) // args.batch)
        compute_steps(model, xs, ys, 2, opt, loss_fn, amp)  # warm-up (kernels, cudnn.benchmark, allocator)
        n = len(y)
        rates = {"lungxray": n / min(timed(device, ours) for _ in range(args.repeat)),
                 "ImageFolder": max(n / min(timed(device, baseline(w)) for _ in range(args.repeat)) for w in {0, cores}),
                 "compute": steps * args.batch / min(timed(device, lambda: compute_steps(model, xs, ys, steps, opt,
                                                                                          loss_fn, amp))
                                                     for _ in range(args.repeat))}
        label = (str(amp).removeprefix("torch.") if amp else "fp32") + (" + channels_last" if cl else "")
        out.append({"model": name, "precision": label, **rates})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="resnet18,efficientnetv2_s")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2, help="epochs timed per loop (best kept)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the train stage
    work = Path(tempfile.mkdtemp(prefix="lungxray-bench-"))
    try:
        data = real_images(Path(args.data), args.images, args.size, work) or synthetic_images(args.images, args.size)
        write_pngs(data[0], data[1], data[2], work / "folder")
        rows = [r for name in args.models.split(",") for r in bench_model(name, data, work / "folder", args, device)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(data[1])} images at {args.size}px, batch {args.batch}, device "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, {os.cpu_count()} cores, "
          f"torch threads {torch.get_num_threads()}; train images/s (best of {args.repeat} epochs)")
    table = pd.DataFrame(rows)
    table["lungxray / compute"] = table.lungxray / table.compute
    table["lungxray / ImageFolder"] = table.lungxray / table.ImageFolder
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
