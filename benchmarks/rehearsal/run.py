"""Run the rehearsal (``make rehearsal``): every DVC stage in pipeline order, timed, then the checks and predict.

    python benchmarks/rehearsal/run.py      # params.yaml = configs/rehearsal.yaml with its weights filled in

1. ``dvc repro --single-item STAGE`` for each stage of ``dvc stage list`` (dvc.yaml's order is the pipeline's), its
   wall time recorded (an up-to-date stage costs DVC's check only, so a rerun after an interruption resumes where
   it stopped), then one plain ``dvc repro`` that must rerun nothing but the ``always_changed`` stages.
2. Checks: every architecture of ``train.models`` has its ``eval.json``, its ``reports/<model>/gradcam.png``, its
   leaderboard row and a registered version; a champion was chosen.
3. ``lungxray predict`` with the champion on a PNG, a JPEG and a DICOM X-ray of ../shared/data, with ``--cam``: every
   file classified, an overlay each.

``benchmarks/out/rehearsal.md`` gets the per-stage and per-architecture wall times (copied into benchmarks/README.md);
the exit status is 1 when a check fails.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from gpu_prepare import sample_files  # noqa: E402  (one home for the PNG/JPEG/DICOM samples)

REPORT = Path("benchmarks/out/rehearsal.md")  # git-ignored


def stages() -> list[str]:
    out = subprocess.run(["dvc", "stage", "list", "--name-only"], check=True, capture_output=True, text=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def run_stages(names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        t0 = time.monotonic()
        p = subprocess.run(["dvc", "repro", "--single-item", name])
        rows.append({"stage": name, "seconds": round(time.monotonic() - t0, 1), "exit": p.returncode})
        print(f"== rehearsal: {name}: {rows[-1]['seconds']} s, exit {p.returncode}", flush=True)
        write_report(rows, [])
        if p.returncode != 0:
            raise SystemExit(f"stage {name} failed (exit {p.returncode}); fix it and rerun make rehearsal: "
                             f"finished stages are not rerun")
    return rows


def always_changed() -> set[str]:
    """Stages dvc.yaml marks ``always_changed`` (fetch looks at its sources again, train_settings re-resolves)."""
    stages = yaml.safe_load(Path("dvc.yaml").read_text())["stages"]
    return {name for name, s in stages.items() if s.get("always_changed")}


def rerun_problems(output: str, returncode: int) -> list[str]:
    """A second ``dvc repro`` must rerun nothing but the always-changed stages."""
    ran = set(re.findall(r"Running stage '([^']+)'", output))
    extra = sorted(ran - always_changed())
    if returncode != 0 or extra:
        return [f"a second dvc repro reran {extra} (exit {returncode}):\n{output[-3000:]}"]
    return []


def checks(models: list[str]) -> list[str]:
    """What the rehearsal must have produced, as failures (empty: all there)."""
    failed = []
    board = json.loads(Path("reports/leaderboard.json").read_text())
    promotion = json.loads(Path("reports/promotion.json").read_text())
    registered = {v["model"] for v in promotion.get("registered_versions", [])}
    for m in models:
        for path in (Path("metrics") / m / "eval.json", Path("reports") / m / "gradcam.png"):
            if not path.is_file() or path.stat().st_size == 0:
                failed.append(f"{m}: {path} missing")
        if m not in board:
            failed.append(f"{m}: no leaderboard row")
        if m not in registered:
            failed.append(f"{m}: not registered")
    if not promotion.get("champion_after"):
        failed.append(f"no champion: {promotion.get('reason')}")
    return failed


def predict(work: Path) -> tuple[pd.DataFrame, list[str]]:
    files = work / "files"
    sample_files(files, REPO.parent / "shared" / "data")
    cam, out = work / "cam", work / "predictions.csv"
    t0 = time.monotonic()
    p = subprocess.run(["lungxray", "predict", str(files), "--cam", str(cam), "--out", str(out)])
    print(f"== rehearsal: predict with the champion: {time.monotonic() - t0:.1f} s, exit {p.returncode}", flush=True)
    failed = [] if p.returncode == 0 else [f"lungxray predict exited {p.returncode}"]
    table = pd.read_csv(out, keep_default_na=False) if out.exists() else pd.DataFrame()
    if len(table) != 3 or (table.get("error", pd.Series([""])).astype(str) != "").any():
        failed.append(f"predict did not classify the 3 files:\n{table.to_string()}")
    if len(list(cam.glob("*.png"))) != 3:
        failed.append(f"predict --cam wrote {len(list(cam.glob('*.png')))} overlays for 3 files")
    return table, failed


def write_report(rows: list[dict], extra: list[str]) -> None:
    table = pd.DataFrame(rows)
    lines = ["# Rehearsal (configs/rehearsal.yaml)", "", "| stage | seconds | exit |", "|---|---|---|"]
    lines += [f"| {r.stage} | {r.seconds} | {r.exit} |" for r in table.itertuples()]
    lines += ["", f"Total: {table.seconds.sum() / 60:.1f} min", "", *extra]
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(lines) + "\n")


def per_model(models: list[str]) -> list[str]:
    lines = ["| model | trainable parameters | train images/s | s/epoch | val accuracy |", "|---|---|---|---|---|"]
    for m in models:
        t = json.loads((Path("metrics") / m / "train.json").read_text())
        lines.append(f"| {m} | {t['trainable_parameters']:,} | {t['train_images_per_s']:.2f} | "
                     f"{t['seconds_per_epoch']:.0f} | {t['best_val_accuracy']:.3f} |")
    return lines


def main() -> int:
    params = yaml.safe_load(Path("params.yaml").read_text())
    models = params["train"]["models"]
    start = time.monotonic()
    rows = run_stages(stages())
    final = subprocess.run(["dvc", "repro"], capture_output=True, text=True)
    failed = rerun_problems(final.stdout + final.stderr, final.returncode) + checks(models)
    table, predict_failed = predict(REPORT.parent / "rehearsal_predict")
    failed += predict_failed
    extra = per_model(models) + ["", "Predictions of the champion:", "", table.to_string(index=False), "",
                                 f"Wall time with checks and predict: {(time.monotonic() - start) / 60:.1f} min"]
    write_report(rows, extra + ([""] + [f"FAILED: {f}" for f in failed] if failed else ["", "All checks passed."]))
    print(REPORT.read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
