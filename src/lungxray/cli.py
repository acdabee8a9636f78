"""The ``lungxray`` console command."""

from __future__ import annotations

import argparse
import sys

from .errors import LungxrayError


def _cmd_check_params(args: argparse.Namespace) -> None:
    from .config import load_params

    params = load_params(args.params)
    print(f"{args.params}: valid ({len(params.fetch.sources)} source(s): "
          + ", ".join(f"{s.name} [{s.kind}]" for s in params.fetch.sources) + ")")


def _cmd_dedupe(args: argparse.Namespace) -> None:
    from .dedupe import DedupeParams, contact_sheet, dedupe_folders, summary_text

    overrides = {"conflict_policy": args.conflict_policy, "workers": args.workers}
    params = DedupeParams(**{k: v for k, v in overrides.items() if v is not None})
    report = dedupe_folders(args.folders, args.out, params, cache_path=args.cache, progress=not args.quiet)
    print(summary_text(report))
    print(f"groups table: {args.out} (one row per image; 'kept' marks one image per X-ray)")
    if args.sheet:
        import pandas as pd

        contact_sheet(pd.read_csv(args.out), report, args.sheet)
        print(f"contact sheet: {args.sheet}")
    if args.report:
        from .io import write_json

        write_json(args.report, report)
        print(f"report: {args.report}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lungxray", description="Leakage-free chest X-ray classification pipeline")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check-params", help="validate a params file and list its sources")
    p.add_argument("params", nargs="?", default="params.yaml")
    p.set_defaults(func=_cmd_check_params)

    p = sub.add_parser("dedupe", help="find copies of the same X-ray in folders of images (recursively)",
                       description="Group every copy of the same X-ray (byte-identical, re-encoded, resized, cropped, "
                                   "padded, brightness/gamma-changed, 16-bit, slightly rotated) across the folders. "
                                   "Labels are taken from each image's parent folder name.")
    p.add_argument("folders", nargs="+", help="folders to scan (each one is a 'source')")
    p.add_argument("--out", required=True, help="CSV to write: one row per image with group, kept and evidence")
    p.add_argument("--report", help="also write the JSON report here")
    p.add_argument("--sheet", help="also write a contact sheet PNG of sample groups and label conflicts here")
    p.add_argument("--cache", help="signature cache file (reruns only hash new files)")
    p.add_argument("--conflict-policy", choices=["drop", "majority", "fail"])
    p.add_argument("--workers", type=int, help="processes (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_dedupe)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except LungxrayError as e:
        print(f"lungxray: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
