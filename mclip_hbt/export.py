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

from mclip_hbt.fileio import OutputError, check_output_dir, check_replaceable
from mclip_hbt.model.clip import create_model
from mclip_hbt.model.export import EXPORTS, OPEN_CLIP_CONFIG, TEXT_ENCODER_CARD, ExportError, relink
from mclip_hbt.offline.hub import ModelUnavailableError


def is_export(folder: Path) -> bool:
    """A folder this command wrote: an open_clip or a transformers export."""
    return (folder / OPEN_CLIP_CONFIG).is_file() or (folder / TEXT_ENCODER_CARD).is_file()


def check_export_target(out: Path, model: str, overwrite: bool) -> None:
    """OutputError for an OUT that the export, replaced into place whole, would take away: the working directory
    or a folder holding it, the model folder being read (or one inside or around it), or a folder of other files
    (unless ``overwrite``)."""
    target, here = out.resolve(), Path.cwd().resolve()
    if target == here or target in here.parents:
        raise OutputError(f"out: {out} is the working directory or holds it; name a folder of its own")
    source = Path(model).resolve()
    if Path(model).exists() and (target == source or source in target.parents or target in source.parents):
        raise OutputError(f"out: {out} is the model folder being exported, or inside or around it; choose "
                          "another folder")
    check_replaceable(out, "out", is_export, overwrite=overwrite)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mclip_hbt.export", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="layout", required=True, metavar="{open_clip,transformers,relink}")
    for layout, what in (("open_clip", "a local-dir folder for open_clip, CLIP_benchmark and clip-retrieval"),
                         ("transformers", "a plain Hugging Face text-encoder folder (the multilingual text side)")):
        command = sub.add_parser(layout, help=what, description=what)
        command.add_argument("model", help="a model folder written by training (RUN/model) or a preset name")
        command.add_argument("out", type=Path, help="the folder to write; an earlier export there is replaced whole, "
                                                    "a folder holding other files only with --overwrite")
        command.add_argument("--overwrite", action="store_true",
                             help="replace OUT even though it holds files that are not an export")
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
        check_export_target(args.out, args.model, args.overwrite)
        check_output_dir(args.out.parent, "out")  # its parent: the export itself is renamed into place whole
        model = create_model(args.model).eval()
        written = EXPORTS[args.layout](model, args.out)
    except (ExportError, OutputError, ModelUnavailableError, ValueError) as err:
        parser.error(str(err))
    print(f"{args.layout} export: {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
