#!/usr/bin/env sh
# Dispatch `docker run mclip-hbt COMMAND [ARGS...]` to the project's command lines.
set -e
usage() {
  cat <<'USAGE'
usage: docker run --rm -v /data:/data mclip-hbt COMMAND [ARGS...]

commands:
  eval.xtd     zero-shot retrieval on XTD10        (python -m eval.xtd --help)
  eval.m3c     zero-shot retrieval on M3C          (python -m eval.m3c --help)
  eval.xflickrco  zero-shot retrieval on xFlickr&CO (python -m eval.xflickrco --help)
  eval.zeroshot   zero-shot classification per language (python -m eval.zeroshot --help)
  eval.report  tables and plots from result files (python -m eval.report --help)
  train        hybrid-batch training               (train.py --help; uses accelerate launch)
  data_recipes.synth_scenes | data_recipes.emoji_world | data_recipes.from_captions | data_recipes.translate
               build shards                        (python -m data_recipes.NAME --help)
  mclip_hbt.export | mclip_hbt.bundled
               export a model, prepare the bundled weights
  python ...   any other Python command

example:
  docker run --rm -v /data:/data mclip-hbt eval.xtd --lang all --model /data/model --images /data/coco
USAGE
}
[ $# -eq 0 ] && { usage; exit 0; }
here=$(cd "$(dirname "$0")" && pwd)
# Inside the image train.py sits in /opt/mclip_hbt; from a checkout it sits one folder up.
train_py=/opt/mclip_hbt/train.py
[ -f "$train_py" ] || train_py="$here/../train.py"
cmd=$1; shift
case "$cmd" in
  -h|--help|help) usage ;;
  eval.xtd|eval.m3c|eval.xflickrco|eval.zeroshot|eval.report|data_recipes.synth_scenes|data_recipes.from_captions|\
  data_recipes.translate|data_recipes.emoji_world|mclip_hbt.export|mclip_hbt.bundled)
    exec python -m "$cmd" "$@" ;;
  train) exec accelerate launch "$train_py" "$@" ;;
  python) exec python "$@" ;;
  *) echo "mclip-hbt: unknown command '$cmd'" >&2; usage >&2; exit 2 ;;
esac
