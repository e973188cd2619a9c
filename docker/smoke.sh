#!/usr/bin/env bash
# Build the image and run the README's `docker run` commands offline on the real XTD10 captions.
#
#   docker/smoke.sh                       # CPU torch from the PyTorch index
#   TORCH_INDEX=pypi docker/smoke.sh      # where that index is unreachable (PyPI's CUDA build: a larger image)
#   TORCH_INDEX=wheels docker/smoke.sh    # wheels put in docker/wheels/
#
# Needs a Docker engine (here: ../shared/tools/docker-engine.sh, which also makes BASE_IMAGE below) and the
# caption data ($MCLIP_HBT_DATA, else ../shared/data). Prints the build time, the image size, the XTD10
# figures from inside the container, and checks that the files it writes belong to the caller. Not a test.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-mclip-hbt:smoke}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
DATA=$(cd "${MCLIP_HBT_DATA:-../shared/data}" && pwd)
# Who the container runs as (the caller by default; RUN_AS=1234:1234 shows the ownership as root would not).
RUN_AS=${RUN_AS:-$(id -u):$(id -g)}
OUT=$(mktemp -d)
chmod 777 "$OUT"
trap 'rm -rf "$OUT"' EXIT

start=$(date +%s)
docker build -t "$IMAGE" --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg TORCH_INDEX="$TORCH_INDEX" .
echo "build: $(( $(date +%s) - start )) s"
echo "image size: $(docker image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.2f GB", $1 / 1e9}')"

run() { docker run --rm --network none --user "$RUN_AS" -v "$DATA:/data:ro" -v "$OUT:/out" "$IMAGE" "$@"; }
run | head -3                                                       # usage
run python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
start=$(date +%s)
run eval.xtd --lang all --text-only --model bundled:multilingual-e5-small --captions /data/xtd10 \
    --out /out/xtd10.json --no-progress
echo "eval.xtd in the container: $(( $(date +%s) - start )) s"
python3 - "$OUT/xtd10.json" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))["summary"]
print("X -> en R@1 (%):", " ".join(f"{x} {100 * row['en']:.1f}" for x, row in summary["crosslingual"]["r@1"].items()
                                 if x != "en"))
print(f"caption pool mAP {100 * summary['multilingual_text']['map']:.1f} %, "
      f"rank distance {summary['multilingual_text']['rank_distance']:.0f}")
PY
owner=$(stat -c '%u:%g' "$OUT/xtd10.json")
[ "$owner" = "$RUN_AS" ] || { echo "FAIL: $OUT/xtd10.json belongs to $owner, not $RUN_AS"; exit 1; }
echo "result files belong to the user the container ran as ($owner)"
