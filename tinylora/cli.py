"""The `tinylora` command: info, demo, bench, pretrain."""

from __future__ import annotations

import argparse
import platform
import sys

from . import __version__
from . import backend as B


def cmd_info(args) -> int:
    """Print versions, backends and BLAS threads."""
    versions = B.versions()
    blas = B.blas_info()
    rows = [
        ("tinylora", __version__),
        ("python", platform.python_version()),
        ("numpy", versions["numpy"]),
        ("cupy", versions["cupy"] or "not installed"),
        ("backend", B.get_backend()),
        ("available backends", ", ".join(B.available_backends())),
        ("device", B.device_name()),
        ("BLAS", f"{blas['library']}, {blas['threads']} threads"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinylora", description="LoRA from scratch on NumPy/CuPy.")
    parser.add_argument("--version", action="version", version=f"tinylora {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("info", help="versions, backends, BLAS threads")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
