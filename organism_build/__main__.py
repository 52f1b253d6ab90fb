"""``python -m organism_build build|install``: build the organism, then install a finished build."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from organism_build.build import Build, log
from organism_build.install import install
from organism_build.reuse import reuse_base_answers, reuse_lora_passes
from organism_build.stages import STAGE_NAMES, run_stages, stages_until


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m organism_build", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="run the build's stages (a stage whose output exists is skipped)")
    build.add_argument("--out", type=Path, default=None,
                       help="build folder (default: <cache>/organism/build-<recipe key>)")
    build.add_argument("--until", choices=STAGE_NAMES, default=STAGE_NAMES[-1], metavar="STAGE",
                       help=f"last stage to run, one of {', '.join(STAGE_NAMES)} (default: all)")
    build.add_argument("--only", nargs="+", choices=STAGE_NAMES, default=None, metavar="STAGE",
                       help="run just these stages (their inputs must exist)")
    build.add_argument("--force", action="append", choices=STAGE_NAMES, default=[], metavar="STAGE",
                       help="redo this stage even if its output exists (repeatable)")
    build.add_argument("--reuse-base-from", type=Path, default=None, metavar="OLD_DIR",
                       help="take the `base` answers of an older build folder whose prompts are this build's less "
                            "the ones added since r12 (checked; organism_build/reuse.py); `base` then answers only those")
    build.add_argument("--reuse-lora-passes-from", type=Path, default=None, metavar="OLD_DIR",
                       help="take the `base` answers and the first LoRA passes of an older build folder that read the "
                            "same prompts and differs only in later passes (checked; organism_build/reuse.py)")
    build.add_argument("--threads", type=int, default=0,
                       help="torch threads (0: torch's default; 1 is faster when other jobs share the cores)")
    install_ = commands.add_parser("install", help="copy a finished build into the source tree, re-render the card")
    install_.add_argument("build_dir", type=Path)
    install_.add_argument("--no-load-timing", action="store_true",
                          help="skip measuring how long a fresh process takes to load the organism")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "install":
            manifest = install(args.build_dir, measure_load=not args.no_load_timing)
            log(f"installed the build of {manifest['built']} from {args.build_dir}")
            return 0
        if args.threads:
            torch.set_num_threads(args.threads)
        build = Build(args.out)
        if args.reuse_base_from is not None:
            reuse_base_answers(build, args.reuse_base_from)
        if args.reuse_lora_passes_from is not None:
            reuse_lora_passes(build, args.reuse_lora_passes_from)
    except (ValueError, FileNotFoundError) as error:  # another recipe's folder; no finished build; no reuse
        print(f"error: {error}", file=sys.stderr)
        return 2
    log(f"build folder: {build.folder}")
    run_stages(build, args.only or stages_until(args.until), force=args.force)
    log(f"build folder: {build.folder}; install it with `python -m organism_build install {build.folder}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
