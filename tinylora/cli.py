"""The `tinylora` command: info, demo, bench, pretrain."""

from __future__ import annotations

import argparse
import platform
import sys

from . import __version__, backend


def cmd_info(args) -> int:
    """Print versions, backends and BLAS threads."""
    versions = backend.versions()
    blas = backend.blas_info()
    rows = [
        ("tinylora", __version__),
        ("python", platform.python_version()),
        ("numpy", versions["numpy"]),
        ("cupy", versions["cupy"] or "not installed"),
        ("backend", backend.get_backend()),
        ("available backends", ", ".join(backend.available_backends())),
        ("device", backend.device_name()),
        ("BLAS", f"{blas['library']}, {blas['threads']} threads"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _backends(text: str) -> list:
    """Parse --backend numpy,cupy, refusing unknown names with the valid ones listed."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in backend.BACKENDS]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"invalid backend {', '.join(bad) or repr(text)}: choose from {', '.join(backend.BACKENDS)} (comma-separated)"
        )
    return names


def _ints(text: str) -> list:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 128,256, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _count(minimum: int):
    """An argparse type for an integer of at least `minimum` (steps, warm-up steps, a rank)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


def cmd_demo(args) -> int:
    """Full fine-tuning vs LoRA on the shipped bases; writes a report folder."""
    from .demo import run_demo

    if len(args.backend) != 1:
        raise SystemExit("tinylora demo: --backend takes one backend (numpy or cupy)")
    run_demo(
        out=args.out,
        fast=args.fast,
        seed=args.seed,
        backend=args.backend[0],
        force=args.force,
        progress=not args.no_progress,
    )
    return 0


def cmd_bench(args) -> int:
    """Time training steps (MLP, GPT; full and LoRA) per backend, optionally against PyTorch."""
    import json

    from .bench import check_widths, run_bench

    quiet = (lambda *a, **k: None) if args.json else print
    available = backend.available_backends()
    missing = [b for b in args.backend if b not in available]
    if missing:
        raise SystemExit(
            f"tinylora bench: backend {', '.join(missing)} is not available here (available: {', '.join(available)}); "
            f"for cupy: {backend.INSTALL_HINT}"
        )
    try:
        check_widths(args.width)
    except ValueError as e:
        raise SystemExit(f"tinylora bench: --width: {e}") from None
    report = run_bench(
        backends=args.backend,
        widths=args.width,
        steps=args.steps,
        warmup=args.warmup,
        compare_torch=args.compare_torch,
        peers=args.peers,
        lora_r=args.lora_r,
        rounds=args.rounds,
        echo=quiet,
        family=args.family,
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"\nratios (measured side by side; median over {args.rounds} round(s)):")
        for r in report["ratios"]:
            each = f"  (rounds: {', '.join(f'{v:.2f}' for v in r['rounds'])})" if args.rounds > 1 else ""
            print(
                f"  {r['what']:<26} {r['model']:<4} {r['mode']:<5} w={r['width']:<4} {r['backend']:<6} "
                f"{r['ratio']:.2f}{each}"
            )
    return 0


def cmd_pretrain(args) -> int:
    """Train a base again into --out (or, with --into-package, over the shipped one)."""
    from .bases import ASSETS, pretrain

    if args.out is None and not args.into_package:
        print(
            f"tinylora pretrain: error: give --out FOLDER for the new base, or --into-package to replace "
            f"the shipped base in {ASSETS} (every demo and chapter uses it)",
            file=sys.stderr,
        )
        return 2
    folder = ASSETS if args.into_package else args.out
    print(f"tinylora pretrain: training {args.name}; it will be written to {folder}", flush=True)
    card = pretrain(args.name, directory=folder, steps=args.steps, progress=not args.no_progress)
    metrics = ", ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
        for k, v in card["metrics"].items()
        if not isinstance(v, dict)
    ) or ", ".join(f"{k} acc {v['accuracy']:.4f}" for k, v in card["metrics"].items())
    print(f"{args.name}: {card['parameters']:,} parameters, {card['training_seconds']} s; {metrics}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinylora", description="LoRA from scratch on NumPy/CuPy.")
    parser.add_argument("--version", action="version", version=f"tinylora {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("info", help="versions, backends, BLAS threads")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="full fine-tuning vs LoRA on the shipped bases, with a report folder")
    p.add_argument("--out", default="tinylora-demo", help="report folder (default: ./tinylora-demo/)")
    p.add_argument("--fast", action="store_true", help="a few steps only (a smoke test)")
    p.add_argument("--seed", type=_count(0), default=0)
    p.add_argument("--backend", type=_backends, default=["numpy"], help="numpy (default) or cupy")
    p.add_argument(
        "--force", action="store_true", help="replace an earlier report in --out (never other files)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="time training steps: MLP and GPT, full vs LoRA, per backend")
    p.add_argument("--backend", type=_backends, default=["numpy"], help="comma-separated: numpy,cupy")
    p.add_argument("--width", type=_ints, default=[128], help="GPT widths (n_embd), e.g. 128,256,512")
    p.add_argument(
        "--steps", type=_count(1), default=10, help="timed steps per configuration (after warm-up)"
    )
    p.add_argument("--warmup", type=_count(0), default=3)
    p.add_argument("--lora-r", type=_count(1), default=8, help="LoRA rank (on q_proj, v_proj)")
    p.add_argument(
        "--rounds",
        type=_count(1),
        default=3,
        help="measure every row this many times, alternating (default 3)",
    )
    p.add_argument(
        "--compare-torch", action="store_true", help="also time PyTorch (if installed) and print ratios"
    )
    p.add_argument(
        "--peers", action="store_true", help="also time dezero and mygrad on the MLP (if installed)"
    )
    p.add_argument(
        "--family",
        action="store_true",
        help="also time the LoRA family on the GPT: DoRA and VeRA steps, LoRA/DoRA forwards unmerged and merged",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("pretrain", help="train a shipped base again: digits or shakespeare")
    p.add_argument("name", choices=["digits", "shakespeare"])
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", default=None, help="folder to write the new base to")
    where.add_argument(
        "--into-package",
        action="store_true",
        help="replace the shipped base inside the installed package (tinylora/assets/)",
    )
    p.add_argument("--steps", type=_count(1), default=None, help="override the recipe's number of steps")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_pretrain)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        if args.command in ("demo", "bench"):
            backend.keep_freed_memory()  # a step's big temporaries stay mapped between steps (README, Backends)
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno is None:  # a refusal of ours (e.g. a non-empty --out): a usage error
            print(f"tinylora {args.command}: error: {e}", file=sys.stderr)
            return 2
        print(f"tinylora {args.command}: error: {_os_error_line(e)}", file=sys.stderr)
        return 1
    except (backend.BackendUnavailableError, ImportError, ValueError) as e:
        print(f"tinylora {args.command}: error: {e}", file=sys.stderr)
        return 2


def _os_error_line(e: OSError) -> str:
    """One line for an error the operating system raised: the path, the reason, what to do."""
    from .io import WriteError  # here, not at the top: `tinylora info` starts without the engine

    if isinstance(e, WriteError):
        return str(e)
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or e}; check the path, its permissions and the free disk space"


if __name__ == "__main__":
    sys.exit(main())
