"""`lungxray predict` rate beside the evaluate stage's throughput, on the same files, in one run.

    python benchmarks/predict_speed.py [--data ../shared/data] [--model models/<model>] [--arch cnn5] [--size 224]
                                       [--limit 400] [--batch-size 32] [--device auto]

"predict" = lungxray.serve.predict.predict_files: decode each file (PNG, JPEG, DICOM), square it with the model's
preprocess settings, normalise, classify, one row per file (one process, batched, on the GPU when present).
"evaluate, scoring" = what the evaluate stage times on the same images once preprocessed: TrainedModel.proba over
the (N, S, S) uint8 array (no decoding). "evaluate, throughput" = its measure_throughput figure (random batches of the
same size), the number eval.json reports. Without --model a freshly initialised --arch is used (speed does not
depend on the weights). Compare the ratios measured in one process, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lungxray.core.schema import IMAGE_EXTENSIONS
from lungxray.models.inference import measure_throughput
from lungxray.serve.predict import find_files, load_predictor, predict_files


def untrained_model_pt(arch: str, size: int, folder: Path) -> Path:
    """A model.pt as the train stage writes it, with freshly initialised weights."""
    from lungxray.models.architectures import create_model

    classes = ["normal", "pneumonia", "covid19"]
    model = create_model(arch, num_classes=len(classes), pretrained=False)
    path = folder / "model.pt"
    torch.save({"model": model.state_dict(), "name": arch, "classes": classes, "image_size": size,
                "config": {"settings": {"freeze": 0, "head": "linear"}}, "mean": [0.5] * 3, "std": [0.25] * 3,
                "normalisation": "data", "preprocess": {"image_size": size, "aspect": "pad", "resample": "area"}}, path)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--model", help="models/<model>, a model.pt or models:/<name>@champion (default: untrained --arch)")
    ap.add_argument("--arch", default="cnn5")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--limit", type=int, default=400, help="files used (the first N, in order)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    root = Path(args.data)
    if not root.is_dir():
        print(f"no data folder at {root}: pass --data FOLDER with chest X-rays", file=sys.stderr)
        return 2
    files = [str(f) for f in find_files([root]) if f.suffix.lower() in IMAGE_EXTENSIONS
             and "unreadable" not in f.as_posix()][:args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        predictor = load_predictor(args.model or untrained_model_pt(args.arch, args.size, Path(tmp)), args.device)
    predictor.batch_size = args.batch_size
    print(f"{len(files)} files under {root}; {predictor.architecture} at {predictor.image_size}px on {predictor.device}, "
          f"batch {args.batch_size}")
    predict_files(files[:args.batch_size], predictor)  # warm up: imports, kernels, page cache

    t = time.perf_counter()
    table = predict_files(files, predictor)
    predict_rate = len(files) / (time.perf_counter() - t)
    ok = [f for f, e in zip(table.file, table.error) if not e]
    squares = np.stack([predictor.square(f) for f in ok])  # what the preprocess stage would have stored
    t = time.perf_counter()
    predictor.proba(squares, batch_size=args.batch_size)
    scoring_rate = len(squares) / (time.perf_counter() - t)
    tp = measure_throughput(predictor.network, predictor.image_size, batch_size=args.batch_size,
                            device=predictor.device, n_batches=10)["images_per_s"]
    print(f"{'':40}{'images/s':>10}")
    print(f"{'lungxray predict (decode+square+model)':40}{predict_rate:>10.1f}")
    print(f"{'evaluate, scoring preprocessed arrays':40}{scoring_rate:>10.1f}")
    print(f"{'evaluate, throughput (eval.json)':40}{tp:>10.1f}")
    print(f"ratio predict / evaluate scoring: {predict_rate / scoring_rate:.2f}x; "
          f"predict / evaluate throughput: {predict_rate / tp:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
