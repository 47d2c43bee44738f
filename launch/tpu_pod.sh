#!/usr/bin/env bash
# Runs an lmjax command on every worker of a TPU VM slice: copies this
# checkout (its committed files) to each worker, installs it from
# requirements.txt with jax[tpu], then runs the same command everywhere, each
# worker's output also kept in ~/lmjax-logs/<worker host>.log on that worker.
#
#   launch/tpu_pod.sh [--dry-run] --tpu=NAME --zone=ZONE [--project=PROJECT] COMMAND...
#
# e.g. launch/tpu_pod.sh --tpu=v5p-64 --zone=us-east5-a python -m lmjax.pretrain \
#        --config=configs/pretrain.py:base --workdir=/mnt/bucket/runs/base
# Needs gcloud, authenticated, on this machine. JAX finds the slice's other
# hosts itself (lmjax.distributed.initialize).
set -euo pipefail

dry_run=0 tpu="" zone="" project=""
while [[ $# -gt 0 && "$1" == --* ]]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --tpu=*) tpu="${1#--tpu=}" ;;
    --zone=*) zone="${1#--zone=}" ;;
    --project=*) project="${1#--project=}" ;;
    *) echo "error: unknown option $1 (usage: launch/tpu_pod.sh [--dry-run] --tpu=NAME --zone=ZONE [--project=PROJECT] COMMAND...)" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z "$tpu" || -z "$zone" || $# -eq 0 ]]; then
  echo "error: usage: launch/tpu_pod.sh [--dry-run] --tpu=NAME --zone=ZONE [--project=PROJECT] COMMAND..." >&2
  exit 2
fi
cd "$(dirname "$0")/.."
jax_version="$(sed -n 's/^jax==\([^ ]*\).*/\1/p' requirements.txt)"
archive=/tmp/lmjax-$$.tar.gz
gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone" --worker=all)
[[ -n "$project" ]] && where+=(--project="$project")
command_line="$(printf '%q ' "$@")"
setup="mkdir -p ~/lmjax ~/lmjax-logs && tar xzf ~/lmjax.tar.gz -C ~/lmjax && cd ~/lmjax && \
python3 -m venv .venv && . .venv/bin/activate && pip install -q -r requirements.txt -e . \
'jax[tpu]==$jax_version'"
run="cd ~/lmjax && . .venv/bin/activate && ${command_line}2>&1 | tee ~/lmjax-logs/\$(hostname).log"

steps=(
  "git archive --format=tar.gz -o $archive HEAD"
  "$(printf '%q ' "${gcloud_tpu[@]}" scp "$archive" "$tpu:~/lmjax.tar.gz" "${where[@]}")"
  "$(printf '%q ' "${gcloud_tpu[@]}" ssh "$tpu" "${where[@]}" --command="$setup")"
  "$(printf '%q ' "${gcloud_tpu[@]}" ssh "$tpu" "${where[@]}" --command="$run")"
  "rm -f $archive"
)
for step in "${steps[@]}"; do
  if [[ $dry_run == 1 ]]; then
    echo "$step"
  else
    echo "[launch] $step" >&2
    eval "$step"
  fi
done
