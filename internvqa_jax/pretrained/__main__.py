"""CLI of the bundled model.

    python -m internvqa_jax.pretrained install --workdir=runs/demo [--which=student]
        [--videos=data_cache/demo_videos] [--train-command="..."] [--dest=DIR]
    python -m internvqa_jax.pretrained refigure [--videos=data_cache/demo_videos] [--dest=DIR] [--workers=2]
    python -m internvqa_jax.pretrained show [--dest=DIR]

`install` copies a training workdir's exported student into the package (`vmaf_demo/`) and writes
its figures.json by scoring the run's test split with `internvqa_jax.load` (see `install.py`).
`refigure` re-records the figures of the installed model from its shipped weights: its held-out
videos made by the current demo recipe, scored again (see `refigure.py`).
`show` prints the README's table of the bundled model's held-out figures, in markdown.
Exit status 0 on success, 1 with a one-line error otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from internvqa_jax import io_utils
from internvqa_jax.pretrained import FIGURES_FILE, bundled_path, read_figures


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line arguments (see module doc)."""
    p = argparse.ArgumentParser(
        prog="python -m internvqa_jax.pretrained", description="Install or show the bundled default scorer."
    )
    sub = p.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="install a training workdir's exported student as the bundled model")
    inst.add_argument("--workdir", required=True, help="finished training workdir (report.json, export/<which>)")
    inst.add_argument("--which", default="student", help="exported network: student, baseline_student, teacher")
    inst.add_argument(
        "--videos",
        default=io_utils.DEMO_VIDEOS_DIR,
        help="built demo videos the run was prepared from (else the test sources are rebuilt)",
    )
    inst.add_argument(
        "--train-command", default="", help="the command that trained the workdir, recorded in figures.json"
    )
    inst.add_argument("--dest", default="", help="install here instead of the package's folder (tests)")
    inst.add_argument("--workers", type=int, default=2, help="ffmpeg processes when test videos are rebuilt")
    refig = sub.add_parser(
        "refigure", help="rescore the bundled model's held-out videos, made by the current demo recipe"
    )
    refig.add_argument(
        "--videos",
        default=io_utils.DEMO_VIDEOS_DIR,
        help="a built demo holding the test videos (else they are rebuilt)",
    )
    refig.add_argument("--dest", default="", help="a bundled model folder other than the package's")
    refig.add_argument("--workers", type=int, default=2, help="ffmpeg processes when test videos are rebuilt")
    show = sub.add_parser("show", help="print the README table of the bundled model's figures (markdown)")
    show.add_argument("--dest", default="", help="a bundled model folder other than the package's")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit status."""
    args = parse_args(argv)
    from internvqa_jax.pretrained import install as install_lib  # heavy (numpy, scipy); after argument checks

    dest = args.dest or bundled_path()
    try:
        if args.command == "install":
            figures = install_lib.install(args.workdir, args.which, args.videos, dest, args.train_command, args.workers)
            size = install_lib.check_size(dest)
            print(f"installed {args.workdir} ({args.which}) as {dest} ({size:.2f} MB)")
        elif args.command == "refigure":
            from internvqa_jax.pretrained import refigure

            figures = refigure.refigure(dest, args.videos, args.workers)
            print(f"re-recorded {dest}/{FIGURES_FILE} from the shipped weights")
        else:
            figures = read_figures(dest)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        print(f"pretrained {args.command}: {err}", file=sys.stderr)
        return 1
    print(install_lib.markdown_table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
