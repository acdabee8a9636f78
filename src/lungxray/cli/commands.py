"""The ``lungxray`` console command.

Exit statuses: 0 done; 2 a usage error, told in one line before any work (a bad option, whose numbers are checked
by :mod:`lungxray.cli.arguments`, a missing model, an output that cannot be written; every
:class:`LungxrayError`); 1 and the others: what each command's ``--help`` says (``predict``: some files could not be
classified).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lungxray.cli.arguments import at_least, check_writable, port_number
from lungxray.core.errors import LungxrayError
from lungxray.core.stage import disable_telemetry

USAGE_ERROR = 2  # argparse's status for a bad option, and every LungxrayError's


def _cmd_check_params(args: argparse.Namespace) -> None:
    if args.explain is not None:
        from lungxray.cli.params_doc import explain

        print(explain(args.explain), end="")
        return
    from lungxray.cli.params_check import load_params

    path = args.params or args.file or "params.yaml"
    params = load_params(path)
    print(f"{path}: valid, every section ({len(params.fetch.sources)} source(s): "
          + ", ".join(f"{s.name} [{s.kind}]" for s in params.fetch.sources) + ")")


def _cmd_dedupe(args: argparse.Namespace) -> None:
    from lungxray.data.dedupe import DedupeParams, contact_sheet, dedupe_folders, summary_text

    overrides = {"conflict_policy": args.conflict_policy, "workers": args.workers}
    params = DedupeParams(**{k: v for k, v in overrides.items() if v is not None})
    report = dedupe_folders(args.folders, args.out, params, cache_path=args.cache, progress=not args.quiet,
                            labels=args.labels, max_pixels=args.max_pixels)
    print(summary_text(report))
    for u in report["unreadable"][:20]:
        print(f"  not used: {u['path']}: {u['error']}")
    if len(report["unreadable"]) > 20:
        print(f"  ... and {len(report['unreadable']) - 20} more (see --report)")
    print(f"groups table: {args.out} (one row per image; 'kept' marks the one image per X-ray "
          "that a split would use, none for a dropped label conflict)")
    if args.sheet:
        import pandas as pd

        contact_sheet(pd.read_csv(args.out), report, args.sheet)
        print(f"contact sheet: {args.sheet}")
    if args.report:
        from lungxray.core.io import write_json

        write_json(args.report, report)
        print(f"report: {args.report}")


def _cmd_predict(args: argparse.Namespace) -> int:
    from lungxray.serve.predict import (
        ERROR,
        FILE,
        PREDICTED,
        cam_writer,
        find_files,
        input_limits,
        load_predictor,
        predict_files,
    )
    from lungxray.serve.predictor import apply_operating_point, find_operating_point, set_input_limits

    limits = input_limits("params.yaml", args.max_pixels)  # a broken params.yaml stops here, before any work
    if args.out:
        check_writable(args.out, "--out")
    if args.cam:
        check_writable(args.cam, "--cam", folder=True)
    skipped: list = []
    files = find_files(args.paths, skipped)
    for path, why in skipped:
        print(f"  not searched: {path}: {why}", file=sys.stderr)
    if not files:
        raise LungxrayError("no files found under " + ", ".join(args.paths) + ": name image files or folders that "
                            "hold some")
    predictor = load_predictor(args.model, device=args.device)
    predictor.batch_size = args.batch_size
    set_input_limits(predictor, **limits)
    find_operating_point(predictor, args.operating_point)  # an unknown name stops before any work
    print(f"predict: {len(files)} file(s) with {predictor.source} ({predictor.architecture}, {predictor.image_size} px, "
          f"{predictor.device})", file=sys.stderr)
    on_batch = cam_writer(args.cam, predictor, files) if args.cam else None
    table = predict_files(files, predictor, progress=not args.quiet and len(files) > predictor.batch_size,
                          on_batch=on_batch)
    table = apply_operating_point(table, predictor, args.operating_point)
    failed = table[table[ERROR] != ""]
    if args.out:
        from lungxray.core.io import write_csv

        write_csv(args.out, table)
        print(f"predictions: {args.out}", file=sys.stderr)
    else:
        table.to_csv(sys.stdout, index=False, lineterminator="\n")
    if args.cam:
        print(f"Grad-CAM overlays: {args.cam}", file=sys.stderr)
    counts = table[table[ERROR] == ""][PREDICTED].value_counts()
    print("predicted: " + (", ".join(f"{c} {n}" for c, n in counts.items()) or "none"), file=sys.stderr)
    for _, row in failed.head(20).iterrows():
        print(f"  not classified: {row[FILE]}: {row[ERROR]}", file=sys.stderr)
    if len(failed):
        print(f"{len(failed)} of {len(table)} file(s) could not be classified (see the error column)", file=sys.stderr)
    return 1 if len(failed) else 0


# exit statuses of `lungxray metrics check` besides 0 (passed), 1 (regression) and 2 (error)
REFUSED_OTHER_IMAGES = 3
REFUSED_STALE = 4


def current_evaluations(params) -> tuple[dict[str, float], dict[str, str]]:
    """Every model's eval.json, flattened to 'model.split.metric' keys, and its evaluation-set fingerprints
    ('model.test_set', 'model.val_set')."""
    from lungxray.compare.gate import SET_KEYS, collect_metrics
    from lungxray.core import schema
    from lungxray.core.errors import LungxrayError
    from lungxray.core.io import read_json
    from lungxray.ensemble.members import evaluated_models

    files, sets = {}, {}
    for name in evaluated_models(params.ensemble, params.train.models):
        f = schema.model_metrics_dir(name) / "eval.json"
        if not f.exists():
            raise LungxrayError(f"{f} is missing: run the pipeline first (dvc repro)")
        files[name] = str(f)
        doc = read_json(f)
        sets.update({f"{name}.{k}": doc[k] for k in SET_KEYS if doc.get(k) is not None})
    return collect_metrics(files), sets


def _refuse_stale(params) -> int | None:
    """Print why and return the refusal status when some eval.json is older than its inputs."""
    from lungxray.core import schema
    from lungxray.ensemble.evaluation import stale_ensemble
    from lungxray.evaluate.evaluation import stale_evaluations

    stale = stale_evaluations(params.train.models, schema.METRICS, schema.PROCESSED, schema.MODELS, params.evaluate)
    stale.update(stale_ensemble(params.ensemble, params.train.models, schema.METRICS, schema.PROCESSED, schema.MODELS,
                                params.evaluate))
    if not stale:
        return None
    print("metrics check REFUSED: these metrics are older than their inputs, so they describe other data or another "
          "model:")
    for name, why in stale.items():
        print(f"  {name}: {why}")
    print("run `dvc repro` to bring them up to date, then check again")
    return REFUSED_STALE


def _cmd_metrics_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lungxray.cli.params_check import load_params
    from lungxray.compare.gate import check, format_table, load_baseline, load_baseline_sets, set_mismatches
    from lungxray.core.errors import LungxrayError

    params = load_params(args.params)
    baseline_path = Path(args.baseline or params.gate.baseline)
    if not baseline_path.exists():
        raise LungxrayError(f"no baseline at {baseline_path}: write one with `lungxray metrics baseline` and commit it")
    metrics, sets = current_evaluations(params)
    refused = _refuse_stale(params)
    if refused:
        return refused
    baseline = load_baseline(baseline_path)
    other = set_mismatches(sets, load_baseline_sets(baseline_path), baseline)
    if other:
        print(f"metrics check REFUSED: the metrics were computed on other images than the baseline {baseline_path}, "
              f"so they cannot be compared (neither a regression nor a pass):")
        for m in other:
            print(f"  {m['key']}: baseline {m['baseline'] or '(no fingerprint recorded)'}, now {m['current']}")
        print("if the data change is intended, write a new baseline with `lungxray metrics baseline`, review it and "
              "commit it")
        return REFUSED_OTHER_IMAGES
    rows, ok = check(metrics, baseline, params.gate)
    print(format_table(rows))
    print(f"metrics check against {baseline_path}: " + ("PASSED" if ok else "FAILED (regression beyond tolerance)"))
    return 0 if ok else 1


def _cmd_metrics_baseline(args: argparse.Namespace) -> int:
    from lungxray.cli.params_check import load_params
    from lungxray.compare.gate import write_baseline

    params = load_params(args.params)
    path = args.out or params.gate.baseline
    metrics, sets = current_evaluations(params)
    refused = _refuse_stale(params)
    if refused:
        return refused
    write_baseline(metrics, path, sets)
    print(f"wrote {path} (metrics and the fingerprints of the images they were measured on): review it (git diff) "
          f"and commit it to make it the new baseline")
    return 0


def _cmd_mlflow_server(args: argparse.Namespace) -> int:
    import signal
    from pathlib import Path

    from lungxray.registry import server

    uri, warning = server.backend_store_uri(args.backend_store_uri, args.backend_store_uri_file)
    if warning:
        print(f"lungxray mlflow-server: warning: {warning}", file=sys.stderr, flush=True)
    fields = ("host", "port", "workers", "pg_data", "pg_port", "artifacts_destination", "auth")
    settings = server.ServerSettings(**{k: getattr(args, k) for k in fields if getattr(args, k) is not None},
                                     backend_store_uri=uri)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop: the server, then PostgreSQL
    with server.team_server(settings) as (url, proc):
        store = "PostgreSQL " + (f"at {server.redact(settings.backend_store_uri)}" if settings.backend_store_uri
                                 else f"in {Path(settings.pg_data)} (127.0.0.1:{settings.pg_port})")
        print(f"MLflow server at {url}: store {store}, artifacts {settings.artifacts_destination}"
              + (", basic auth" if settings.auth else ""), flush=True)
        print(f"  the pipeline logs there with:  export MLFLOW_TRACKING_URI={url}"
              + ("  MLFLOW_TRACKING_USERNAME=...  MLFLOW_TRACKING_PASSWORD=..." if settings.auth else ""), flush=True)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            return 130


def _cmd_report(args: argparse.Namespace) -> int:
    from lungxray.core import schema
    from lungxray.core.config import load_sections
    from lungxray.core.io import atomic_path
    from lungxray.report.build import build_report
    from lungxray.report.publish import publish_report
    from lungxray.train.settings import TrainParams

    out = Path(args.out) if args.out else schema.REPORT_HTML
    check_writable(str(out), "--out")
    html, run = build_report(".")
    with atomic_path(out) as tmp:
        tmp.write_text(html, encoding="utf-8")
    print(f"wrote {out} (champion {run.champion}; {len(run.absent)} absent part(s))")
    if args.mlflow:
        logged = publish_report(out, run.promotion, load_sections({"train": TrainParams}).train.mlflow)
        if logged:
            print(f"logged to MLflow: {logged['uri']} ({logged['registered_model']} v{logged['version']})")
    return 0


def _add_report(sub) -> None:
    """``lungxray report``: rebuild reports/report.html from the run's outputs."""
    p = sub.add_parser("report", help="rebuild the run report (reports/report.html) from the run's outputs",
                       description="One self-contained HTML page of the pipeline run in this directory (what "
                                   "`dvc repro report` writes): opens offline, prints, embeds every figure.")
    p.add_argument("--out", help="HTML file to write (default: reports/report.html)")
    p.add_argument("--mlflow", action="store_true", help="also log it to the champion's MLflow run and link it from "
                                                         "its registered version (as the report stage does)")
    p.set_defaults(func=_cmd_report)


def build_parser() -> argparse.ArgumentParser:
    """The ``lungxray`` parser: one sub-command per ``_add_*`` below, each bound to its ``_cmd_*``."""
    ap = argparse.ArgumentParser(prog="lungxray", description="Leakage-free chest X-ray classification pipeline")
    sub = ap.add_subparsers(dest="command", required=True)
    for add in (_add_check_params, _add_dedupe, _add_predict, _add_metrics, _add_mlflow_server, _add_report):
        add(sub)
    return ap


def _add_check_params(sub) -> None:
    p = sub.add_parser("check-params", help="check every section of a params file and list its sources",
                       description="Each stage reads only its own section; this checks the whole file at once (an "
                                   "unknown key or section, a wrong type). `make run` runs it before `dvc repro`.")
    p.add_argument("file", nargs="?", help="params file (default: params.yaml)")
    p.add_argument("--params", help="params file (the same as FILE)")
    p.add_argument("--explain", nargs="*", metavar="SECTION",
                   help="print the reference of the given sections (all when none): each field with its type, "
                        "default and description; reads no params file")
    p.set_defaults(func=_cmd_check_params)


def _add_dedupe(sub) -> None:
    from lungxray.core.schema import DEFAULT_MAX_PIXELS

    p = sub.add_parser("dedupe", help="find copies of the same X-ray in folders of images (recursively)",
                       description="Group every copy of the same X-ray (byte-identical, re-encoded, resized, cropped, "
                                   "padded, brightness/gamma-changed, 16-bit, slightly rotated) across the folders. "
                                   "Labels are taken from each image's parent folder name.")
    p.add_argument("folders", nargs="+", help="folders to scan (each one is a 'source')")
    p.add_argument("--out", required=True, help="CSV to write: one row per image with group, kept and evidence")
    p.add_argument("--report", help="also write the JSON report here")
    p.add_argument("--sheet", help="also write a contact sheet PNG of sample groups and label conflicts here")
    p.add_argument("--cache", help="signature cache file (reruns only hash new files)")
    p.add_argument("--labels", choices=["parent", "none"], default="parent",
                   help="labels from each image's parent folder (default), or none (flat folders: no label check)")
    p.add_argument("--conflict-policy", choices=["drop", "majority", "fail"])
    p.add_argument("--max-pixels", type=at_least(1), default=DEFAULT_MAX_PIXELS,
                   help=f"images with more pixels are not decoded (decompression bombs; default {DEFAULT_MAX_PIXELS}, "
                        f"as fetch.max_pixels)")
    p.add_argument("--workers", type=at_least(0), help="processes (default, or 0: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_dedupe)


def _add_predict(sub) -> None:
    from lungxray.core.schema import DEFAULT_MAX_PIXELS

    p = sub.add_parser("predict", help="classify X-ray files (PNG, JPEG, DICOM, ...) or folders with a trained model",
                       description="One row per file: the predicted class and one probability per class; a file "
                                   "that cannot be used gets its reason in the error column (the other files are "
                                   "still classified). Exit status: 0 every file was classified, 1 some files could "
                                   "not be classified (their reason is in the error column; the others were "
                                   "classified), 2 usage error (a bad option, no model, an output that cannot be "
                                   "written, no files found): nothing was classified.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    p.add_argument("--model", help="models:/<name>@champion (an MLflow model URI), or models/<model> (a trained "
                                   "model folder); default: the champion of the configured registry")
    p.add_argument("--out", help="CSV to write (default: the table on stdout)")
    p.add_argument("--cam", metavar="DIR", help="also write one Grad-CAM overlay PNG per classified image into DIR "
                                                "(the X-ray, the heat map of the predicted class, class and "
                                                "probability)")
    p.add_argument("--operating-point", default="argmax", metavar="NAME",
                   help="argmax (default), or one chosen on val and stored with the model, e.g. pneumonia@sens95 or "
                        "pneumonia@youden: adds a column NAME, true when prob_<class> >= its threshold")
    p.add_argument("--batch-size", type=at_least(1), default=32, help="images per batch (default 32)")
    p.add_argument("--max-pixels", type=at_least(1),
                   help=f"images with more pixels are not decoded (decompression bombs; default: fetch.max_pixels of "
                        f"params.yaml when there is one, else {DEFAULT_MAX_PIXELS}); images below the validate "
                        f"section's min_width / min_height (default 32x32) are refused too: the pipeline would not "
                        f"have used them")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: the GPU when present")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict)


def _add_metrics(sub) -> None:
    m = sub.add_parser("metrics", help="CI regression gate on the evaluation metrics").add_subparsers(
        dest="metrics_command", required=True)
    p = m.add_parser("check", help="compare current metrics with the committed baseline; exit 1 on a regression",
                     description="Exit status: 0 passed, 1 regression (or a metric missing), 2 error, "
                                 f"{REFUSED_OTHER_IMAGES} refused: the metrics were measured on other images than the "
                                 f"baseline's, {REFUSED_STALE} refused: an eval.json is older than its inputs "
                                 f"(run dvc repro).")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--baseline", help="baseline file (default: gate.baseline in params)")
    p.set_defaults(func=_cmd_metrics_check)
    p = m.add_parser("baseline", help="write the current metrics as the new baseline file (for review and commit)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--out", help="where to write (default: gate.baseline in params)")
    p.set_defaults(func=_cmd_metrics_baseline)


def _add_mlflow_server(sub) -> None:
    p = sub.add_parser("mlflow-server", help="run a team MLflow tracking server on PostgreSQL (artifacts served)",
                       description="PostgreSQL as the store of runs and the model registry (a local one created in "
                                   "--pg-data, or an existing one by --backend-store-uri); artifacts uploaded through "
                                   "the server into --artifacts-destination. Ctrl-C stops the server and PostgreSQL. "
                                   "Point the pipeline at it with MLFLOW_TRACKING_URI=http://HOST:PORT.")
    p.add_argument("--host", help="interface to bind (default 127.0.0.1: this machine only; 0.0.0.0: every one)")
    p.add_argument("--port", type=port_number, help="server port (default 5000)")
    p.add_argument("--workers", type=at_least(1), help="server worker processes (default 2)")
    p.add_argument("--backend-store-uri", help="an existing PostgreSQL: postgresql://user:password@host:5432/db "
                                               "(default: $MLFLOW_BACKEND_STORE_URI, else a local PostgreSQL in "
                                               "--pg-data). A password given here is visible in `ps`: prefer "
                                               "$MLFLOW_BACKEND_STORE_URI, --backend-store-uri-file or ~/.pgpass")
    p.add_argument("--backend-store-uri-file", metavar="FILE",
                   help="read the existing PostgreSQL's URI from the first line of FILE (keep it chmod 600)")
    p.add_argument("--pg-data", help="data directory of the local PostgreSQL (default mlflow-server/postgres)")
    p.add_argument("--pg-port", type=port_number, help="port of the local PostgreSQL on 127.0.0.1 (default 5433)")
    p.add_argument("--artifacts-destination", help="where the server stores artifacts: a folder or s3://bucket/path "
                                                   "(default mlflow-server/artifacts)")
    p.add_argument("--auth", action="store_true", default=None,
                   help="MLflow's basic-auth app; needs MLFLOW_FLASK_SERVER_SECRET_KEY and, the first time, "
                        "MLFLOW_AUTH_ADMIN_PASSWORD")
    p.set_defaults(func=_cmd_mlflow_server)


def main(argv: list[str] | None = None) -> int:
    disable_telemetry()
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except LungxrayError as e:
        print(f"lungxray: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    return rc or 0


if __name__ == "__main__":
    raise SystemExit(main())
