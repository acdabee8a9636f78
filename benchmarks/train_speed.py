"""Training throughput at 224 px: the project's loop vs the seed work's loop vs the model's compute alone.

    python benchmarks/train_speed.py --device cuda|cpu [--models resnet18,efficientnetv2_s|all] [--images 512]
                                     [--batch 64] [--size 224] [--data ../shared/data | --processed DIR]
                                     [--precisions fp32,auto] [--channels-last on|off|on,off] [--budget-s S]

For each model and each precision (fp32; fp16 with the loss scaler, on CUDA; bf16; "auto" is the train stage's
choice: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32) with channels_last on and/or off, train images/s of
one epoch over the same images by:

* ``lungxray``: the train stage's loop (:func:`lungxray.train.loop.run_epoch`: uint8 memmap -> background thread ->
  pinned memory -> ``non_blocking`` copy, normalisation and augmentation on the device, loss summed on the device);
* ``ImageFolder``: torchvision ImageFolder + PIL decode + transforms + DataLoader (best of 0 and all-core workers,
  pinned memory on CUDA) over the same images written as PNG files to a temporary folder;
* ``compute``: forward + backward + step on one synthetic batch already on the device: the rate no input path can
  beat. The ratio lungxray / compute is the share of time the device does not wait for data (target >= 0.9 on a GPU).

Images: a preprocess stage's output (``--processed``), else the real X-rays of ``--data`` (preprocessed to ``--size``)
when present, else synthetic ones. Every model gets its first configurations (``--folder-configs``, with the
ImageFolder baseline) before any gets the others, so a time budget (``--budget-s``) still covers every model. Models
start from random weights (speed does not depend on them). Figures are printed, never asserted.
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

from lungxray.data.preprocess import PreprocessParams, load_split, run_preprocess
from lungxray.images.augment import AugmentParams
from lungxray.models.architectures import create_model
from lungxray.train.loop import ArrayBatches, Feed, optimiser_step, resolve_precision, run_epoch


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


def step(model, x, y, opt, loss_fn, amp, scaler) -> None:
    """One training step as the train stage takes it (fp16: through the loss scaler)."""
    with torch.autocast(device_type=x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        loss = loss_fn(model(x).float(), y)
    optimiser_step(loss, opt, scaler)


def folder_epoch(model, loader, device, opt, loss_fn, amp, channels_last, scaler=None, max_batches=None) -> int:
    model.train()
    n = 0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x = x.to(device, non_blocking=True).contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        y = y.to(device, non_blocking=True)
        step(model, x, y, opt, loss_fn, amp, scaler)
        n += len(y)
    return n


def compute_steps(model, x, y, steps, opt, loss_fn, amp, scaler=None) -> None:
    model.train()
    for _ in range(steps):
        step(model, x, y, opt, loss_fn, amp, scaler)


PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def configs(precisions: str, channels_last: str, device: torch.device) -> list[tuple[str, bool]]:
    """(precision name, channels_last) pairs to time; "auto" is the train stage's choice for ``device``."""
    out = []
    for p in precisions.split(","):
        if p == "auto":  # the train stage's choice, by its name here
            p = {dtype: name for name, dtype in PRECISIONS.items()}[resolve_precision("auto", device)]
        if p not in PRECISIONS:
            raise SystemExit(f"--precisions: {p!r} is not one of auto, {', '.join(PRECISIONS)}")
        if p == "fp16" and device.type != "cuda":
            continue  # fp16 autocast is CUDA's (the train stage refuses it on the CPU)
        for cl in channels_last.split(","):
            if (p, cl == "on") not in out:
                out.append((p, cl == "on"))
    return sorted(out, key=lambda c: not c[1])  # channels_last (the train stage's default) first


def bench_config(name: str, data, folder_ds, args, device: torch.device, precision: str, cl: bool,
                 with_folder: bool) -> dict:
    """Train images/s of the three loops for one architecture, precision and memory format. fp16 trains with a
    loss scaler (as the train stage does); bf16 and fp32 without."""
    x, y, classes = data
    amp = PRECISIONS[precision]
    torch.manual_seed(0)
    model = create_model(name, num_classes=len(classes), pretrained=False).to(device)
    model = model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, **({"fused": True} if device.type == "cuda" else {}))
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    loss_fn, aug = nn.CrossEntropyLoss(), AugmentParams()

    def ours():
        g = torch.Generator().manual_seed(0)
        run_epoch(model, ArrayBatches(x, y, args.batch, "shuffle", g, pin_memory=device.type == "cuda"), loss_fn,
                  Feed(device, [0.5] * 3, [0.25] * 3, amp, cl), opt, scaler=scaler, augment=aug, generator=g)

    def baseline(workers):  # workers start once (persistent): their start-up is not timed
        loader = DataLoader(folder_ds, batch_size=args.batch, shuffle=True, num_workers=workers,
                            pin_memory=device.type == "cuda", persistent_workers=workers > 0)
        folder_epoch(model, loader, device, opt, loss_fn, amp, cl, scaler, max_batches=1)
        return lambda: folder_epoch(model, loader, device, opt, loss_fn, amp, cl, scaler)

    xs = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(
        memory_format=torch.channels_last if cl else torch.contiguous_format)
    ys = torch.arange(args.batch, device=device) % len(classes)
    steps = -(-len(y) // args.batch)
    compute_steps(model, xs, ys, 3, opt, loss_fn, amp, scaler)  # warm-up (kernels, cudnn.benchmark, allocator)
    n = len(y)
    rates = {"lungxray": n / min(timed(device, ours) for _ in range(args.repeat)),
             "compute": steps * args.batch / min(timed(device, lambda: compute_steps(model, xs, ys, steps, opt,
                                                                                      loss_fn, amp, scaler))
                                                 for _ in range(args.repeat))}
    if with_folder:
        cores = os.cpu_count() or 1  # on a GPU machine all-core workers win: 0 workers is timed on small CPUs only
        rates["ImageFolder"] = max(n / min(timed(device, fn) for _ in range(args.repeat))
                                   for fn in map(baseline, sorted({cores} if cores > 4 else {0, cores})))
    return {"model": name, "precision": precision + (" + channels_last" if cl else ""), **rates}


def folder_dataset(folder: Path, size: int):
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Grayscale(num_output_channels=3),
                             transforms.RandomAffine(5, translate=(0.05, 0.05), scale=(0.95, 1.05)),
                             transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.25] * 3)])
    return datasets.ImageFolder(str(folder), transform=tf)


def bench_models(names: list[str], data, folder: Path, args, device: torch.device, deadline: float = float("inf"),
                 on_row=None) -> list[dict]:
    """Every model in the first (main) configurations first, then the others while time is left before
    ``deadline`` (``time.monotonic()``): a short budget still gives every architecture its main rows. The ImageFolder
    baseline runs in the first two configurations (``--folder-configs``) only."""
    folder_ds = folder_dataset(folder, args.size)
    todo = configs(args.precisions, args.channels_last, device)
    rows, first = [], todo[: args.folder_configs]
    passes = [first, todo[args.folder_configs:]]
    for configs_of_pass in passes:
        for name in names:
            for precision, cl in configs_of_pass:
                if time.monotonic() > deadline:
                    rows.append({"model": name, "precision": precision + (" + channels_last" if cl else ""),
                                 "note": "not run: time budget spent"})
                    continue
                try:
                    row = bench_config(name, data, folder_ds, args, device, precision, cl,
                                       with_folder=(precision, cl) in first)
                except Exception as e:  # noqa: BLE001 - one failing model is a row, not the end of the run
                    row = {"model": name, "precision": precision + (" + channels_last" if cl else ""),
                           "note": f"failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}"}
                rows.append(row)
                if on_row is not None:
                    on_row(row)
    return rows


def ratio_table(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    for col in ("lungxray", "compute", "ImageFolder", "note"):
        if col not in table:
            table[col] = float("nan") if col != "note" else ""
    table["lungxray / compute"] = table.lungxray / table.compute
    table["lungxray / ImageFolder"] = table.lungxray / table.ImageFolder
    table["note"] = table["note"].fillna("")
    return table


def processed_images(folder: Path, n: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``n`` images of a preprocess stage's output folder (its train split, repeated when it holds fewer)."""
    import json

    x, y = load_split(folder, "train")
    classes = json.loads((folder / "stats.json").read_text())["classes"]
    idx = np.resize(np.arange(len(y)), n)
    return np.asarray(x)[idx], np.asarray(y)[idx], classes


def arguments(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="resnet18,efficientnetv2_s", help="comma-separated, or 'all' (the nine)")
    ap.add_argument("--data", default="../shared/data", help="real X-rays to preprocess (synthetic when absent)")
    ap.add_argument("--processed", type=Path, help="a preprocess stage's output folder to read instead of --data")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2, help="epochs timed per loop (best kept)")
    ap.add_argument("--precisions", default="fp32,auto",
                    help="comma-separated of auto (the train stage's choice), fp32, fp16 (CUDA), bf16")
    ap.add_argument("--channels-last", default="on", help="on, off or on,off (each precision in each)")
    ap.add_argument("--folder-configs", type=int, default=2,
                    help="the ImageFolder baseline runs in this many of the first configurations")
    ap.add_argument("--budget-s", type=float, default=float("inf"),
                    help="start no configuration after this many seconds (the rest are listed as not run)")
    ap.add_argument("--csv", type=Path, help="also write the table here")
    return ap.parse_args(argv)


def load_images(args, work: Path):
    if args.processed:
        return processed_images(args.processed, args.images)
    return real_images(Path(args.data), args.images, args.size, work) or synthetic_images(args.images, args.size)


def main(argv=None) -> int:
    from lungxray.models.architectures import MODEL_NAMES

    args = arguments(argv)
    start = time.monotonic()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the train stage
    names = list(MODEL_NAMES) if args.models == "all" else args.models.split(",")
    work = Path(tempfile.mkdtemp(prefix="lungxray-bench-"))
    try:
        data = load_images(args, work)
        args.size = data[0].shape[-1]
        write_pngs(data[0], data[1], data[2], work / "folder")
        done: list[dict] = []

        def on_row(row: dict) -> None:  # the table so far is on disk after every row (a killed run keeps it)
            print(row, flush=True)
            done.append(row)
            if args.csv:
                ratio_table(done).to_csv(args.csv, index=False)

        rows = bench_models(names, data, work / "folder", args, device, start + args.budget_s, on_row=on_row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(data[1])} images at {args.size}px, batch {args.batch}, device "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}; train images/s (best of {args.repeat} "
          f"epochs)")
    table = ratio_table(rows)
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
