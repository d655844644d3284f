"""``fitnets-fast``: ``train`` (a preset, with overrides or a resume), ``eval`` (a saved model), ``hints``
(candidate hint/guided layer pairs of two networks), ``info``.

Examples::

    fitnets-fast train                                   # the digits preset: teacher, backprop, KD, FitNets
    fitnets-fast train --seeds 0,1,2                     # the same over three seeds: mean ± std table
    fitnets-fast train --preset cifar10 --data-dir data --set student=fitnet1 max_epochs=100
    fitnets-fast train --resume runs/digits-20260101-120000
    torchrun --nproc_per_node 2 -m fitnets_fast train --preset cifar10 --data-dir data   # 2 processes (DDP)
    torchrun --nproc_per_node 2 --no-python fitnets-fast train --preset cifar10 --data-dir data
    fitnets-fast eval runs/digits-20260101-120000/models/fitnets.pt
    fitnets-fast hints --teacher resnet56 --student resnet20 --top 5
    fitnets-fast info
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    from .config import preset_names

    parser = argparse.ArgumentParser(prog="fitnets-fast", description="FitNets: hints for thin deep nets.")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="run a preset (default: digits) and print the result table")
    t.add_argument("--preset", default=None, choices=preset_names(), help="the settings to start from (digits)")
    t.add_argument("--data-dir", default=None, help="folder of the downloaded data sets (not needed for digits)")
    t.add_argument("--out", default=None,
                   help="run folder (default runs/<preset>-<UTC time>, with a -2, -3, ... suffix if taken)")
    t.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override settings (JSON values), e.g. --set lr=0.001 methods='[\"kd\"]'")
    t.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its last checkpoint")
    t.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    t.add_argument("--seed", type=int, default=None, help="one run with this seed (default 0)")
    t.add_argument("--seeds", default=None, metavar="LIST",
                   help="one run per seed, e.g. 0,1,2, then mean ± std (default: one run)")
    t.add_argument("--quiet", action="store_true", help="no progress output (the table is still printed)")
    e = sub.add_parser("eval", help="test accuracy of a saved model file (models/<row>.pt of a run)")
    e.add_argument("checkpoint")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--device", default=None)
    h = sub.add_parser("hints", help="candidate (hint, guided) layer pairs of a teacher and a student, best first")
    h.add_argument("--teacher", required=True, metavar="NAME_OR_FILE", help="a model name or a run's model file")
    h.add_argument("--student", required=True, metavar="NAME_OR_FILE", help="a model name or a run's model file")
    h.add_argument("--input-shape", default=None, metavar="C,H,W",
                   help="shape of one input (default: the networks' own)")
    h.add_argument("--top", type=int, default=10, help="number of pairs to list (default 10)")
    sub.add_parser("info", help="versions, devices, op backends, presets and model names")
    return parser


def _run_settings(args) -> Dict[str, Any]:
    """The keyword arguments of ``fitnets_fast.train`` from the command line; ``ValueError`` for a
    contradiction. Without ``--seed``/``--seeds`` a preset may run several seeds by default (digits: 0, 1, 2)."""
    from .config import parse_overrides
    from .seeds import default_seeds, parse_seeds

    overrides = parse_overrides([item for group in args.overrides for item in group])
    if args.resume:
        given = [flag for flag, value in (("--set", overrides), ("--out", args.out), ("--preset", args.preset),
                                          ("--seed", args.seed)) if value not in (None, {})]
        given += ["--seeds"] if args.seeds else []
        if given:
            raise ValueError(f"--resume continues the run with its saved settings; drop {'/'.join(given)}")
        return {"resume": args.resume}
    if "preset" in overrides:
        raise ValueError("choose the preset with --preset, not --set preset=...")
    for key in ("seed", "device"):
        flag = getattr(args, key)
        if key in overrides and flag is not None and overrides[key] != flag:
            raise ValueError(f"--{key} {flag} and --set {key}={overrides[key]} disagree; give one of them")
        if flag is not None:
            overrides[key] = flag
    preset = args.preset or "digits"
    if args.seeds:
        if "seed" in overrides:
            raise ValueError("give --seed (one run) or --seeds (several), not both")
        return {"preset": preset, "out_dir": args.out, "seeds": parse_seeds(args.seeds), **overrides}
    if "seed" not in overrides and default_seeds(preset) is not None:
        return {"preset": preset, "out_dir": args.out, "seeds": default_seeds(preset), **overrides}
    return {"preset": preset, "out_dir": args.out, **overrides}


def _train(args) -> int:
    from . import train
    from .distributed import DistributedFailure, is_main_process
    from .run_files import CheckpointError, RunFolderError, RunInterrupted, format_table
    from .trainer import TrainingDiverged

    try:
        settings = _run_settings(args)
        summary = train(data_dir=args.data_dir, quiet=args.quiet, **settings)
    except RunInterrupted as exc:
        print(f"\n{exc.advice()}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted before a run folder was made; nothing was saved", file=sys.stderr)
        return 130
    except DistributedFailure as exc:
        print(f"error: {exc}", file=sys.stderr)
        # After a lost peer, gloo's threads can abort the interpreter's shutdown ("terminate called without an
        # active exception", exit status -6, measured in about 1 run in 15): leave now, with status 1. The
        # checkpoint files are complete (atomic writes) and the process group is already closed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    except (ValueError, TypeError, CheckpointError, RunFolderError, TrainingDiverged, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not is_main_process():   # torchrun: rank 0 alone prints the table
        return 0
    if args.quiet:  # train() prints the table itself unless quiet
        print(format_table(summary))
    print(f"run folder: {summary['run_dir']}")
    return 0


def _eval(args) -> int:
    from .run_files import CheckpointError
    from .trainer import evaluate_model_file

    try:
        out = evaluate_model_file(args.checkpoint, data_dir=args.data_dir, device=args.device)
    except (ValueError, TypeError, CheckpointError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


def _hints(args) -> int:
    from .hints import format_hints, suggest_hints
    from .run_files import CheckpointError

    try:
        shape = None
        if args.input_shape is not None:
            try:
                shape = tuple(int(v) for v in args.input_shape.split(","))
            except ValueError:
                raise ValueError(f"--input-shape must be C,H,W (three ints), got {args.input_shape!r}") from None
        pairs = suggest_hints(args.teacher, args.student, shape, top=args.top)
    except (ValueError, TypeError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_hints(pairs))
    return 0


def _info(args) -> int:
    from . import info
    from .config import PRESETS
    from .models import names

    info()
    print("presets:")
    for name, p in PRESETS.items():
        print(f"  {name}: {p.get('description', '')}")
    print("models: " + ", ".join(names()))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return {"train": _train, "eval": _eval, "hints": _hints, "info": _info}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
