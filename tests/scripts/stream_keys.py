"""Stream one epoch on this rank and write what it saw; run under ``accelerate launch`` by tests/test_data.py."""
import argparse
import json
from pathlib import Path

import torchvision.transforms as T
from accelerate import Accelerator

from mclip_hbt.data.loader import LoaderConfig, build_loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", required=True, help="brace-expanded shard pattern")
    parser.add_argument("--out-dir", required=True, help="folder for rank{N}.json")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers per rank")
    parser.add_argument("--chunk-size", type=int, default=4, help="samples per chunk")
    parser.add_argument("--samples-per-epoch", type=int, default=10, help="per-rank epoch length in resampled mode")
    args = parser.parse_args()

    state = Accelerator().state  # rank and world size reach the loader through the process group
    report = {"rank": state.process_index, "world_size": state.num_processes}
    loader = build_loader(LoaderConfig(train_data=args.shards, chunk_size=args.chunk_size, workers=args.workers),
                                       T.ToTensor())
    loader.set_epoch(1)
    chunks = list(loader)
    report.update(keys=[k for c in chunks for k in c["keys"]], chunks=len(chunks),
                  planned_chunks=len(loader))
    resampled = build_loader(LoaderConfig(train_data=args.shards, chunk_size=args.chunk_size, workers=args.workers,
                                          resampled=True, samples_per_epoch=args.samples_per_epoch), T.ToTensor())
    sizes = [len(c["keys"]) for c in resampled]
    report.update(resampled_chunks=len(sizes), resampled_samples=sum(sizes))
    Path(args.out_dir, f"rank{state.process_index}.json").write_text(json.dumps(report))
    state.wait_for_everyone()


if __name__ == "__main__":
    main()
