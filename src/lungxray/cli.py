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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lungxray", description="Leakage-free chest X-ray classification pipeline")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check-params", help="validate a params file and list its sources")
    p.add_argument("params", nargs="?", default="params.yaml")
    p.set_defaults(func=_cmd_check_params)
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
