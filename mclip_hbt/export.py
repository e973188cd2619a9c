"""Write a trained model as the folders other tools load.

    python -m mclip_hbt.export open_clip runs/demo/model exports/demo-open_clip
    python -m mclip_hbt.export transformers runs/demo/model exports/demo-text-encoder
    python -m mclip_hbt.export relink exports/demo-open_clip      # after moving an open_clip export

The layouts themselves are ``mclip_hbt.model.export``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mclip_hbt.fileio import OutputError, check_output_dir
from mclip_hbt.model.clip import create_model
from mclip_hbt.model.export import EXPORTS, ExportError, relink
from mclip_hbt.offline.hub import ModelUnavailableError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mclip_hbt.export", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="layout", required=True, metavar="{open_clip,transformers,relink}")
    for layout, what in (("open_clip", "a local-dir folder for open_clip, CLIP_benchmark and clip-retrieval"),
                         ("transformers", "a plain Hugging Face text-encoder folder (the multilingual text side)")):
        command = sub.add_parser(layout, help=what, description=what)
        command.add_argument("model", help="a model folder written by training (RUN/model) or a preset name")
        command.add_argument("out", type=Path, help="the folder to write (replaced whole if it exists)")
    command = sub.add_parser("relink", help="after moving an open_clip export: point it at its new place")
    command.add_argument("folder", type=Path, help="the moved open_clip export")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.layout == "relink":
            print(f"relinked: {relink(args.folder)}")
            return 0
        model = create_model(args.model).eval()
        check_output_dir(args.out.parent, "out")  # its parent: the export itself is renamed into place whole
        written = EXPORTS[args.layout](model, args.out)
    except (ExportError, OutputError, ModelUnavailableError, ValueError) as err:
        parser.error(str(err))
    print(f"{args.layout} export: {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
