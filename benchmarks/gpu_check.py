"""The GPU proof of the default recipe (issue 19): one run, one output folder, at most about 8 minutes on one GPU.

    python benchmarks/gpu_prepare.py                           # here, once: .gpu/ (wheels, 224-px X-rays, samples)
    bash benchmarks/gpu_check.sh OUT                           # on the GPU machine (installs the carried wheels)
    bash benchmarks/gpu_check.sh OUT --device cpu --quick      # the same code path on a CPU, small sizes (dry run)

It needs no registry and no ../shared/data: ``.gpu/`` (git-ignored, carried with the working tree) holds the Python
wheels the GPU machine lacks, a preprocess stage's output of real X-rays at 224 px (``.gpu/processed``) and a PNG, a
JPEG and a DICOM X-ray (``.gpu/files``). Parts, each recorded in ``OUT/results.json`` as soon as it ends (a failing
part is recorded and the next one runs):

1. ``env``: device, torch / CUDA / cuDNN / NCCL versions, date.
2. ``pipeline``: for two architectures of the default recipe (resnet18 with its default ``freeze: 2``,
   efficientnetv2_s with the seed head), the real stages in a scratch project: ``stages/train.py`` (2 epochs, on the
   device, the train section's AMP and channels_last) -> ``stages/evaluate.py`` -> ``lungxray predict --cam`` on the
   three files, on the device and then on the CPU. Checks: finite train and val losses at every epoch, every
   probability row summing to 1, an overlay per file and Grad-CAM maps that are not flat, the device's and the CPU's
   probabilities of the same model agreeing within ``TOLERANCE``.
3. ``torchrun``: the train stage under ``torchrun --nproc_per_node=<GPUs>`` (NCCL on CUDA, gloo on a CPU): it must
   finish, report that backend and write its model.
4. ``speed``: ``benchmarks/train_speed.py`` for all nine architectures at 224 px: the train stage's loop vs compute
   alone vs ImageFolder + PIL + DataLoader, in fp32, fp16 (with the loss scaler) and bf16, channels_last on and off,
   within the time left (every architecture gets fp32 and fp16 with channels_last, and the ImageFolder baseline,
   before any gets the other configurations).

``OUT/summary.md`` (printed last) has every figure; ``OUT/speed.csv`` the speed table; ``OUT/logs.txt`` the stages'
output. Nothing here is a test: figures are printed, and the checks are reported as passed or failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 0.01  # |p_device - p_cpu| per class: CUDA convolutions run in TF32 by default, the CPU in fp32
PIPELINE_MODELS = ["resnet18", "efficientnetv2_s"]
QUICK_MODELS = ["cnn5", "resnet18"]


class Check:
    """The results of one run, written to OUT/results.json after every part."""

    def __init__(self, out: Path):
        self.out, self.results = out, {}
        self.log = (out / "logs.txt").open("a")

    def save(self) -> None:
        (self.out / "results.json").write_text(json.dumps(self.results, indent=2, default=str))

    def part(self, name: str, fn) -> None:
        t0 = time.monotonic()
        print(f"== {name}", flush=True)
        try:
            self.results[name] = {"status": "passed", **(fn() or {})}
        except Exception as e:  # noqa: BLE001 - a failed part is a result, and the next part still runs
            self.results[name] = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
            self.log.write(f"== {name} failed\n{traceback.format_exc()}\n")
            print(f"   FAILED: {type(e).__name__}: {e}", flush=True)
        self.results[name]["seconds"] = round(time.monotonic() - t0, 1)
        self.save()

    def run(self, cmd: list[str], cwd: Path, title: str) -> str:
        """Run a command with the repository's src on the path; its output goes to logs.txt; failure raises."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
               "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1",
               "PYTHONUNBUFFERED": "1"}
        t0 = time.monotonic()
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        took = time.monotonic() - t0
        self.log.write(f"== {title} ({took:.1f} s, exit {p.returncode}): {' '.join(map(str, cmd))}\n"
                       f"{p.stdout}{p.stderr}\n")
        self.log.flush()
        print(f"   {title}: exit {p.returncode}, {took:.1f} s", flush=True)
        if p.returncode != 0:
            tail = (p.stdout + p.stderr).strip().splitlines()[-3:]
            raise RuntimeError(f"{title} failed (exit {p.returncode}): {' | '.join(tail)}")
        return p.stdout + p.stderr


# --- scratch project ----------------------------------------------------------------------------------------------------


def subset_processed(src: Path, dst: Path, per_split: int | None, size: int | None) -> None:
    """A copy of a preprocess output with at most ``per_split`` images per split, resized to ``size`` (the dry run's
    small sizes); unchanged otherwise."""
    from PIL import Image

    dst.mkdir(parents=True, exist_ok=True)
    index = pd.read_csv(src / "index.csv", keep_default_na=False, dtype=str)
    stats = json.loads((src / "stats.json").read_text())
    parts = []
    for split in index.split.unique():
        rows = index[index.split == split]
        x = np.load(src / f"{split}.npy")
        keep = len(rows) if per_split is None else min(per_split, len(rows))
        x = x[:keep]
        if size and size != x.shape[-1]:
            x = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in x]) \
                if len(x) else np.zeros((0, size, size), np.uint8)
        np.save(dst / f"{split}.npy", x)
        parts.append(rows.iloc[:keep])
    for split in ("train", "val", "test", "test_official"):
        if not (dst / f"{split}.npy").exists():
            shutil.copy(src / f"{split}.npy", dst / f"{split}.npy")
    pd.concat(parts).to_csv(dst / "index.csv", index=False)
    if size:
        stats["image_size"] = size
    (dst / "stats.json").write_text(json.dumps(stats, indent=2))


def scratch_project(root: Path, processed: Path, models: list[str], device: str, epochs: int,
                    per_split: int | None, size: int | None) -> Path:
    """A project folder with the default params.yaml's sections (train: ``models``, ``epochs``, no ImageNet
    download) and the carried processed arrays, as the stages expect them (paths relative to the folder)."""
    root.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    train = params["train"]
    train.update(models=models, epochs=epochs, pretrained=False, device=device)
    for name, options in (train.get("model_options") or {}).items():
        options["pretrained"] = False  # no hub on the GPU machine; speed and the code path do not depend on weights
    params["evaluate"]["bootstrap"] = 200
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subset_processed(processed, root / "data" / "processed", per_split, size)
    return root


# --- the parts ------------------------------------------------------------------------------------------------------


def env_part(device: torch.device) -> dict:
    info = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "python": sys.version.split()[0], "device": device.type, "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), gpu_count=torch.cuda.device_count(),
                    gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    nccl=".".join(map(str, torch.cuda.nccl.version())), bf16=torch.cuda.is_bf16_supported())
    for lib in ("timm", "mlflow", "pandas", "numpy", "pydantic"):
        try:
            from importlib.metadata import version

            info[lib] = version(lib)
        except Exception:  # noqa: BLE001
            info[lib] = None
    print("   " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    return info


def predictions(csv: Path, classes: list[str]) -> np.ndarray:
    table = pd.read_csv(csv, keep_default_na=False)
    bad = table[table.error.astype(str) != ""] if "error" in table else table.iloc[:0]
    if len(bad):
        raise RuntimeError(f"predict could not classify {list(bad.iloc[:, 0])}: {list(bad.error)}")
    return table[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float64)


def heatmap_check(model_dir: Path, files: list[Path], device: str) -> dict:
    """The Grad-CAM maps predict --cam draws (PredictedBatch.heatmaps), computed in this process: not flat."""
    from lungxray.serve.predict import load_predictor
    from lungxray.serve.predictor import classify

    predictor, maps = load_predictor(model_dir, device=device), []
    classify(predictor, [str(f) for f in files], [f.name for f in files],
             on_batch=lambda batch: maps.append(batch.heatmaps()))
    heat = np.concatenate(maps)
    spread = [float(h.max() - h.min()) for h in heat]
    if not all(np.isfinite(heat).all() for heat in maps) or min(spread) <= 0:
        raise RuntimeError(f"a Grad-CAM map is flat or not finite (max - min per image: {spread})")
    return {"heatmap_spread": [round(s, 3) for s in spread]}


def pipeline_model(check: Check, root: Path, name: str, files: list[Path], device: str) -> dict:
    py = sys.executable
    out = check.run([py, str(REPO / "stages/train.py"), name], root, f"train {name}")
    history = pd.read_csv(root / "metrics" / name / "history.csv")
    losses = history[["train_loss", "val_loss"]].to_numpy()
    if not np.isfinite(losses).all():
        raise RuntimeError(f"{name}: a loss is not finite: {losses.tolist()}")
    train = json.loads((root / "metrics" / name / "train.json").read_text())
    check.run([py, str(REPO / "stages/evaluate.py"), name], root, f"evaluate {name}")
    ev = json.loads((root / "metrics" / name / "eval.json").read_text())
    if not (root / "reports" / name / "gradcam.png").is_file():
        raise RuntimeError(f"{name}: evaluate wrote no reports/{name}/gradcam.png")
    classes = ev["classes"]
    probs = {}
    for dev in dict.fromkeys([device, "cpu"]):
        cam = root / f"cam_{name}_{dev}"
        csv = root / f"predict_{name}_{dev}.csv"
        check.run([py, "-m", "lungxray.cli", "predict", *map(str, files), "--model", f"models/{name}", "--cam",
                   str(cam), "--out", str(csv), "--device", dev, "--quiet"], root, f"predict {name} on {dev}")
        probs[dev] = predictions(csv, classes)
        overlays = sorted(cam.glob("*.png"))
        if len(overlays) != len(files) or min(p.stat().st_size for p in overlays) == 0:
            raise RuntimeError(f"predict --cam on {dev} wrote {len(overlays)} overlays for {len(files)} files")
        if dev == device:
            shutil.copy(overlays[0], check.out / f"cam_{name}.png")
    sums = np.concatenate(list(probs.values())).sum(1)
    if np.abs(sums - 1).max() > 1e-4:
        raise RuntimeError(f"{name}: probabilities do not sum to 1: {sums.tolist()}")
    diff = float(np.abs(probs[device] - probs["cpu"]).max())
    if diff > TOLERANCE:
        raise RuntimeError(f"{name}: {device} and CPU probabilities differ by {diff:.2e} > {TOLERANCE}")
    return {"losses": losses.round(4).tolist(), "precision": train["precision"], "device": train["device"],
            "seconds_per_epoch": round(train["seconds_per_epoch"], 2),
            "train_images_per_s": round(train["train_images_per_s"], 1),
            "test_accuracy": ev["test"]["accuracy"], "max_prob_diff_device_vs_cpu": diff,
            "tolerance": TOLERANCE, **heatmap_check(root / "models" / name, files, device),
            "stage_line": [ln for ln in out.splitlines() if ln.startswith(f"train {name}")][-1:]}


def pipeline_part(check: Check, args, work: Path) -> dict:
    models = QUICK_MODELS if args.quick else PIPELINE_MODELS
    root = scratch_project(work / "pipeline", args.processed, models, args.device, 1 if args.quick else 2,
                           24 if args.quick else None, 64 if args.quick else None)
    files = sorted(p for p in args.files.iterdir() if p.is_file())
    kinds = {p.suffix.lower() for p in files}
    if not {".png", ".dcm"} <= kinds or not kinds & {".jpg", ".jpeg"}:
        raise RuntimeError(f"{args.files} must hold a PNG, a JPEG and a DICOM (.dcm) file: run gpu_prepare.py")
    out = {"files": [p.name for p in files]}
    for name in models:
        print(f"   {name}", flush=True)
        out[name] = pipeline_model(check, root, name, files, args.device)
        check.results["pipeline"] = {"status": "running", **out}
        check.save()
    return out


def torchrun_part(check: Check, args, work: Path) -> dict:
    name = "cnn5" if args.quick else "resnet18"
    root = scratch_project(work / "torchrun", args.processed, [name], args.device, 1,
                           24 if args.quick else None, 64 if args.quick else None)
    nproc = torch.cuda.device_count() if args.device == "cuda" else 1
    out = check.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                     str(REPO / "stages/train.py"), name], root, f"torchrun train {name}")
    expected = "nccl" if args.device == "cuda" else "gloo"
    line = [ln for ln in out.splitlines() if ln.startswith(f"train {name}")]
    if not line or f"{expected} backend" not in line[-1]:
        raise RuntimeError(f"the train stage did not report the {expected} backend: {line}")
    if not (root / "models" / name / "model.pt").is_file():
        raise RuntimeError("no model.pt after the torchrun run")
    return {"model": name, "processes": nproc, "backend": expected, "stage_line": line[-1]}


def speed_part(check: Check, args, work: Path, deadline: float) -> dict:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import train_speed

    budget = max(0.0, deadline - time.monotonic())
    argv = ["--device", args.device, "--processed", str(args.processed), "--models",
            "cnn5,resnet18" if args.quick else "all", "--images", "32" if args.quick else str(args.images),
            "--batch", "16" if args.quick else "64", "--repeat", "1" if args.quick else "2",
            "--precisions", args.precisions, "--channels-last", args.channels_last, "--folder-configs", "2",
            "--budget-s", str(budget), "--csv", str(check.out / "speed.csv")]
    if args.quick:
        subset_processed(args.processed, work / "speed-quick", 32, 64)
        argv[argv.index("--processed") + 1] = str(work / "speed-quick")
    print(f"   train_speed.py {' '.join(argv)}", flush=True)
    train_speed.main(argv)
    table = pd.read_csv(check.out / "speed.csv")
    ran = table[table.lungxray.notna()]
    return {"rows": len(table), "measured": len(ran), "budget_s": round(budget)}


def summary(check: Check) -> str:
    r = check.results
    lines = ["# GPU check", "", "| part | status | seconds | detail |", "|---|---|---|---|"]
    for name, res in r.items():
        detail = res.get("error", "")
        if name == "env" and res["status"] == "passed":
            detail = ", ".join(f"{k} {res[k]}" for k in ("gpu", "torch", "cuda", "cudnn", "nccl", "date") if k in res)
        elif name == "pipeline" and res["status"] == "passed":
            detail = "; ".join(f"{m}: {v['precision']}, {v['seconds_per_epoch']} s/epoch, max |p_dev - p_cpu| "
                               f"{v['max_prob_diff_device_vs_cpu']:.1e}" for m, v in res.items() if isinstance(v, dict))
        elif name == "torchrun" and res["status"] == "passed":
            detail = res["stage_line"]
        lines.append(f"| {name} | {res['status']} | {res.get('seconds', '')} | {detail} |")
    csv = check.out / "speed.csv"
    if csv.exists():
        table = pd.read_csv(csv).fillna({"note": ""})
        lines += ["", "Train images/s (best of the timed epochs):", "",
                  table.to_string(index=False, float_format=lambda v: f"{v:.2f}")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="the output folder (created)")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--quick", action="store_true", help="small sizes (the CPU dry run): 64 px, 24 images")
    ap.add_argument("--processed", type=Path, default=REPO / ".gpu" / "processed")
    ap.add_argument("--files", type=Path, default=REPO / ".gpu" / "files")
    ap.add_argument("--images", type=int, default=384, help="images per timed epoch in the speed part")
    ap.add_argument("--budget-s", type=float, default=400, help="no speed configuration starts after this")
    ap.add_argument("--parts", default="env,pipeline,torchrun,speed")
    ap.add_argument("--precisions", default="fp32,fp16,bf16", help="speed part: train_speed.py --precisions")
    ap.add_argument("--channels-last", default="on,off", help="speed part: train_speed.py --channels-last")
    args = ap.parse_args(argv)
    start = time.monotonic()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible: use --device cpu (with --quick for the dry run)", file=sys.stderr)
        return 2
    if not (args.processed / "stats.json").is_file():
        print(f"{args.processed} holds no preprocessed arrays: run python benchmarks/gpu_prepare.py", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"lungxray-gpu-check-{os.getpid()}"
    check, parts = Check(args.out), args.parts.split(",")
    try:
        if "env" in parts:
            check.part("env", lambda: env_part(torch.device(args.device)))
        if "pipeline" in parts:
            check.part("pipeline", lambda: pipeline_part(check, args, work))
        if "torchrun" in parts:
            check.part("torchrun", lambda: torchrun_part(check, args, work))
        if "speed" in parts:
            check.part("speed", lambda: speed_part(check, args, work, start + args.budget_s))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = summary(check)
    (args.out / "summary.md").write_text(text)
    print(text)
    return 0 if all(r["status"] == "passed" for r in check.results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
