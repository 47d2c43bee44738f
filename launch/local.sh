#!/usr/bin/env bash
# Starts N processes of COMMAND on this machine as one JAX job, each with its
# own share of simulated CPU devices; prefixes their output with "[index] ";
# exits with the first non-zero status (killing the rest), else 0.
#
#   launch/local.sh [--dry-run] [--devices=K] [--port=P] N COMMAND...
#
# When one process fails the others get SIGTERM, then SIGKILL after
# $LMJAX_LAUNCH_GRACE_S seconds (default 30: longer than a survivor takes to
# end itself with one line, see lmjax.distributed). SIGTERM or SIGINT to the
# launcher goes to every process, and the launcher exits (143 or 130) only
# once all have ended, killing what is left after the same grace period.
#
# Each process gets JAX_COORDINATOR_ADDRESS=localhost:P, JAX_NUM_PROCESSES=N,
# JAX_PROCESS_ID=i, JAX_PLATFORMS=cpu and
# XLA_FLAGS=--xla_force_host_platform_device_count=K (default 4); lmjax's
# entry points start JAX's distributed runtime from them.
set -euo pipefail

dry_run=0 devices=4 port=""
while [[ $# -gt 0 && "$1" == --* ]]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --devices=*) devices="${1#--devices=}" ;;
    --port=*) port="${1#--port=}" ;;
    *) echo "error: unknown option $1 (usage: launch/local.sh [--dry-run] [--devices=K] [--port=P] N COMMAND...)" >&2; exit 2 ;;
  esac
  shift
done
if [[ $# -lt 2 || ! "$1" =~ ^[1-9][0-9]*$ || ! "$devices" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: usage: launch/local.sh [--dry-run] [--devices=K] [--port=P] N COMMAND... (N, K positive)" >&2
  exit 2
fi
count="$1"; shift
grace=${LMJAX_LAUNCH_GRACE_S:-30}
if [[ ! "$grace" =~ ^[0-9]+$ ]]; then
  echo "error: LMJAX_LAUNCH_GRACE_S must be a whole number of seconds, got '$grace'" >&2
  exit 2
fi
if [[ -z "$port" ]]; then
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')"
fi

environment() {  # the variables of process $1
  echo "JAX_COORDINATOR_ADDRESS=localhost:$port JAX_NUM_PROCESSES=$count JAX_PROCESS_ID=$1" \
       "JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=$devices"
}

if [[ $dry_run == 1 ]]; then
  for ((i = 0; i < count; i++)); do
    printf '%s' "$(environment "$i")"; printf ' %q' "$@"; echo
  done
  exit 0
fi

pids=() stopped_at=0
# SIGTERM lets the others save and exit; one stuck in a collective with a dead
# peer cannot, so SIGKILL follows after a grace period.
stop() { kill -TERM "${pids[@]}" 2>/dev/null || true; stopped_at=$SECONDS; }
alive() { local pid; for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && return 0; done; return 1; }
# The launcher itself stopped: the signal goes to every process, and the
# launcher exits only once none is left (SIGKILL after the grace period).
shutdown() {  # SIGNAL STATUS
  trap '' TERM INT
  echo "[launch] got SIG$1; passing it on, waiting up to ${grace} s for the processes" >&2
  kill -"$1" "${pids[@]}" 2>/dev/null || true
  local ticks=$((grace * 10))
  while alive && [[ $ticks -gt 0 ]]; do sleep 0.1; ticks=$((ticks - 1)); done
  if alive; then
    echo "[launch] killing what is left after ${grace} s" >&2
    kill -KILL "${pids[@]}" 2>/dev/null || true
  fi
  wait 2>/dev/null  # bash's "Killed" notices
  exit "$2"
}
trap 'shutdown TERM 143' TERM
trap 'shutdown INT 130' INT
for ((i = 0; i < count; i++)); do
  # shellcheck disable=SC2046  # the variables are words by design
  env $(environment "$i") "$@" > >(sed -u "s/^/[$i] /") 2>&1 &
  pids+=("$!")
done
status=0 remaining=("${pids[@]}")
while [[ ${#remaining[@]} -gt 0 ]]; do
  for index in "${!remaining[@]}"; do
    pid="${remaining[$index]}"
    kill -0 "$pid" 2>/dev/null && continue
    set +e; wait "$pid" 2>/dev/null; code=$?; set -e  # not bash's "Killed" notice
    unset 'remaining[index]'
    if [[ $code -ne 0 && $status -eq 0 ]]; then
      status=$code
      echo "[launch] process $pid exited with status $code; stopping the others" >&2
      stop
    fi
  done
  if [[ $stopped_at -gt 0 && $((SECONDS - stopped_at)) -ge $grace ]]; then
    kill -KILL "${remaining[@]}" 2>/dev/null || true
  fi
  sleep 0.1
done
wait
exit "$status"
