"""Convert a bundled offline model into its cache folder and print the folder.

    python -m mclip_hbt.bundled                              # the text encoder (multilingual-e5-small)
    python -m mclip_hbt.bundled --name efficientnet-lite0    # an image tower's weights
"""
from __future__ import annotations

import argparse

from mclip_hbt.offline.bundled_e5 import BUNDLED_FILES, DEFAULT_BUNDLED, MissingOfflineExtraError, bundled_model_path
from mclip_hbt.offline.bundled_vision import BUNDLED_VISION, converted_weights_dir


def main(argv: list[str] | None = None) -> None:
    prepare = {**{name: bundled_model_path for name in BUNDLED_FILES},
               **{name: converted_weights_dir for name in BUNDLED_VISION}}
    parser = argparse.ArgumentParser(
        prog="python -m mclip_hbt.bundled",
        description="Convert a bundled offline model (the text encoder, or an image tower's weights) into its "
                    "cache folder and print the folder.")
    parser.add_argument("--name", default=DEFAULT_BUNDLED, choices=sorted(prepare),
                        help="bundled model to prepare (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="convert again even if the folder exists")
    args = parser.parse_args(argv)
    try:
        print(prepare[args.name](args.name, force=args.force))
    except MissingOfflineExtraError as err:
        parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main()
