"""Train a MultilingualCLIP with hybrid batches.

    accelerate launch train.py --config configs/tiny.yaml [--option value ...]
    python train.py --config configs/tiny.yaml            # one device

`python train.py --help` documents every option.
"""
from mclip_hbt.train.loop import cli_main

if __name__ == "__main__":
    cli_main()
