"""Training throughput: the project's loop (decode once, uint8 memmap) vs the seed work's loop (torchvision
ImageFolder + PIL decode every epoch + DataLoader), same model, image size, batch size and cores, in one run.

    python benchmarks/train_speed.py [--data ../shared/data] [--model cnn5] [--size 128] [--images 600]

Both loops do the same work per step: forward, loss, backward and an optimiser step on a 3-channel batch. The baseline
is given its best DataLoader worker count (0 or all cores). Figures printed are train images/s of one epoch (best of
--repeat, interleaved so CPU speed drift hits both alike) and the one-time preprocessing cost of the project's loop,
amortised over --epochs. On a GPU (``--device cuda``) it also reports AMP + channels_last on and off.
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
from torch import nn
from torch.utils.data import DataLoader

from lungxray.augment import AugmentParams
from lungxray.models import create_model
from lungxray.preprocess import PreprocessParams, load_split, run_preprocess
from lungxray.inference import to_model_input
from lungxray.train_loop import ArrayBatches, resolve_precision


def pick_images(root: Path, n: int, seed: int = 0) -> pd.DataFrame:
    rows = []
    for folder in ("jtiptj_test", "skytells_covid19_xray/NonAugmentedTrain"):
        base = root / folder
        if base.is_dir():
            for p in sorted(base.rglob("*")):
                if p.suffix.lower() in (".jpg", ".jpeg", ".png"):
                    rows.append({"path": str(p), "label": p.parent.name})
    df = pd.DataFrame(rows)
    if df.empty:
        raise SystemExit(f"no images under {root}: pass --data with the shared chest X-rays")
    return df.sample(n=min(n, len(df)), random_state=seed).reset_index(drop=True)


def image_folder(df: pd.DataFrame, dest: Path) -> None:
    """Lay the images out as ImageFolder expects (symlinks, class sub-folders)."""
    for i, r in df.iterrows():
        d = dest / r.label
        d.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.abspath(r.path), d / f"{i:05d}{Path(r.path).suffix}")


def epoch(model, batches, device, opt, loss_fn, amp=None, channels_last=False, prep=None) -> float:
    """One training epoch; ``prep`` turns a loader batch into the model input (the project's loop: uint8 ->
    normalised, augmented, 3-channel on the device; the baseline's batches are ready tensors)."""
    model.train()
    n, t = 0, time.perf_counter()
    for x, y in batches:
        x = prep(x) if prep else x.to(device)
        y = y.to(device)
        with torch.autocast(device_type=device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = loss_fn(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--model", default="cnn5")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=10, help="epochs to amortise the one-time preprocessing over")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    from torchvision import datasets, transforms

    device = torch.device(args.device)
    cores = os.cpu_count() or 1
    df = pick_images(Path(args.data), args.images)
    work = Path(tempfile.mkdtemp(prefix="lungxray-bench-"))
    try:
        image_folder(df, work / "folder")
        t = time.perf_counter()
        split = pd.DataFrame({"id": [str(i) for i in range(len(df))], "path": df.path, "label": df.label,
                              "split": "train", "source": "bench"})
        classes = sorted(df.label.unique())
        stats = run_preprocess(split, classes, PreprocessParams(image_size=args.size, aspect="stretch"),
                               work / "processed", progress=False)
        prep_s = time.perf_counter() - t
        x, y = load_split(work / "processed", "train")

        tf = transforms.Compose([transforms.Grayscale(num_output_channels=3), transforms.Resize((args.size, args.size)),
                                 transforms.RandomAffine(5, translate=(0.05, 0.05), scale=(0.95, 1.05)),
                                 transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.25] * 3)])
        folder_ds = datasets.ImageFolder(str(work / "folder"), transform=tf)
        aug = AugmentParams()

        torch.manual_seed(0)
        model = create_model(args.model, num_classes=len(classes)).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        loss_fn = nn.CrossEntropyLoss()

        def run_baseline(workers: int) -> float:
            loader = DataLoader(folder_ds, batch_size=args.batch, shuffle=True, num_workers=workers,
                                pin_memory=device.type == "cuda", persistent_workers=False)
            return epoch(model, loader, device, opt, loss_fn)

        def run_ours(amp=None, cl=False) -> float:
            g = torch.Generator().manual_seed(0)
            batches = ArrayBatches(x, y, args.batch, "shuffle", g)
            if cl:
                model.to(memory_format=torch.channels_last)
            r = epoch(model, batches, device, opt, loss_fn, amp=amp, channels_last=cl,
                      prep=lambda b: to_model_input(b, device, stats["mean"], stats["std"], cl, aug, g))
            model.to(memory_format=torch.contiguous_format)
            return r

        fast = resolve_precision("auto", device)  # the project's default: fp16 on CUDA, bf16 on bf16 CPUs
        run_ours()  # warm-up (allocator, kernels)
        base = {0: [], cores: []}
        plain, ours = [], []
        for _ in range(args.repeat):  # interleaved, so CPU speed drift hits every loop alike
            for w in base:
                base[w].append(run_baseline(w))
            plain.append(run_ours())
            ours.append(run_ours(amp=fast, cl=True))
        best_w = max(base, key=lambda w: max(base[w]))
        b, p, o = max(base[best_w]), max(plain), max(ours)
        n = len(df)
        amortised = n * args.epochs / (n * args.epochs / o + prep_s)
        label = f"{str(fast).removeprefix('torch.') if fast else 'fp32'} + channels_last"
        print(f"{n} images at {args.size}px, model {args.model}, batch {args.batch}, device {device}, "
              f"{cores} cores, torch threads {torch.get_num_threads()}")
        print(f"{'loop':58}{'train images/s':>16}")
        for w in base:
            print(f"{f'ImageFolder + PIL + DataLoader, fp32 (workers={w})':58}{max(base[w]):>16.1f}")
        print(f"{'lungxray, decode once, fp32':58}{p:>16.1f}")
        print(f"{f'lungxray, decode once, {label} (default)':58}{o:>16.1f}")
        print(f"{f'  incl. one-time preprocess ({prep_s:.1f}s) over {args.epochs} epochs':58}{amortised:>16.1f}")
        print(f"ratio lungxray / best baseline: {o / b:.2f}x per epoch ({p / b:.2f}x from decoding once alone), "
              f"{amortised / b:.2f}x amortised")
        if device.type == "cuda":
            print(f"GPU: fp32 {p:.1f} img/s, AMP + channels_last {o:.1f} img/s ({o / p:.2f}x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
