#!/usr/bin/env bash
# Cloud TPU VM slices, from nothing to a self-restarting training job.
#
#   launch/tpu_vm.sh [--dry-run] create         # the slice (SPOT=1: spot, QUEUED=1: queued)
#   launch/tpu_vm.sh [--dry-run] setup          # ship HEAD's tracked files to every worker, install
#   launch/tpu_vm.sh [--dry-run] train [flags]  # (re)start main.py on every worker as a service
#   launch/tpu_vm.sh [--dry-run] stop           # SIGTERM: checkpoint, exit, no restart
#   launch/tpu_vm.sh [--dry-run] status         # the slice's state and every worker's service
#   launch/tpu_vm.sh [--dry-run] logs           # follow worker $WORKER's log (default 0)
#   launch/tpu_vm.sh [--dry-run] delete         # the slice (and its queued resource)
#   launch/tpu_vm.sh [--dry-run] watch [flags]  # recreate, set up, train when preempted
#
# Every command needs TPU_NAME and ZONE; `create` also ACCELERATOR (v4-64, v5litepod-16,
# v5p-64, v6e-16, ...), `train` also WORKDIR and TFDS_DATA_DIR (both on GCS, gs://...),
# `watch` all of these. Optional: RUNTIME (default per TPU generation), SPOT=1, QUEUED=1,
# AUTOCHECKPOINT=1 (gcloud alpha's --autocheckpoint-enabled: SIGTERM before a maintenance
# event, so the run saves; not with QUEUED=1), CONFIG (default configs/imagenet128.py), WORKER
# (for logs), WATCH_INTERVAL (seconds between polls and retries, 300).
# --dry-run or DRY_RUN=1 prints every command instead of running it. Flags after `train` or
# `watch` reach main.py unchanged, whatever they contain.
set -euo pipefail

DRY_RUN=${DRY_RUN:-0}
if [[ ${1:-} == --dry-run ]]; then
  DRY_RUN=1
  shift
fi
COMMAND=${1:-}
shift || true

usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

need() {  # need VAR "example": stops with one sentence when VAR is unset or empty.
  if [[ -z ${!1:-} ]]; then
    echo "error: launch/tpu_vm.sh $COMMAND needs $1, e.g. export $1=$2" >&2
    exit 2
  fi
}

run() {  # Runs a command, or prints it as a shell-quoted line under --dry-run.
  if [[ $DRY_RUN == 1 ]]; then
    local quoted
    printf -v quoted '%q ' "$@"
    echo "${quoted% }"
  else
    "$@"
  fi
}

on_workers() {  # on_workers WORKERS REMOTE_COMMAND
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker="$1" --command="$2"
}

# The runtimes Google lists for JAX. All of them are Ubuntu 22.04 with Python 3.10, older
# than jax >= 0.10.2 accepts (3.11+), so `setup` does not use the image's Python: it installs
# uv and a uv-managed Python $PYTHON_VERSION into a venv on every worker.
default_runtime() {
  case $ACCELERATOR in
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}
PYTHON_VERSION=3.12

# Worker-side layout (see launch/tpu_worker.sh): the code, replaced whole by every `setup`.
# shellcheck disable=SC2088  # The worker's shell expands the tilde.
REMOTE_CODE='~/bigbigan_jax'
REMOTE_WORKER="bash $REMOTE_CODE/launch/tpu_worker.sh"

wait_until_active() {  # A queued resource is granted later; setup needs the VMs.
  local describe=(gcloud compute tpus queued-resources describe "$TPU_NAME" --zone="$ZONE"
                  --format='value(state.state)')
  if [[ $DRY_RUN == 1 ]]; then
    run "${describe[@]}"
    return
  fi
  local state
  while true; do
    state=$("${describe[@]}")
    case $state in
      ACTIVE) return ;;
      FAILED|SUSPENDED) echo "error: queued resource $TPU_NAME is $state." >&2; exit 1 ;;
      *) echo "queued resource $TPU_NAME: ${state:-unknown}; waiting" >&2; sleep 60 ;;
    esac
  done
}

create() {
  need ACCELERATOR v4-64
  local runtime=${RUNTIME:-$(default_runtime)}
  local spot=()
  [[ ${SPOT:-0} == 1 ]] && spot=(--spot)
  if [[ ${QUEUED:-0} == 1 && ${AUTOCHECKPOINT:-0} == 1 ]]; then
    echo "error: AUTOCHECKPOINT=1 needs a plain slice (QUEUED=0)." >&2
    exit 2
  fi
  if [[ ${QUEUED:-0} == 1 ]]; then
    run gcloud compute tpus queued-resources create "$TPU_NAME" --zone="$ZONE" \
      --node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR" --runtime-version="$runtime" \
      "${spot[@]}"
    wait_until_active
  elif [[ ${AUTOCHECKPOINT:-0} == 1 ]]; then
    run gcloud alpha compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR" --version="$runtime" "${spot[@]}" --autocheckpoint-enabled
  else
    run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR" --version="$runtime" "${spot[@]}"
  fi
}

setup() {
  local top archive
  top=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
  if [[ -n $(git -C "$top" status --porcelain --untracked-files=no) ]]; then
    echo "warning: setup ships the last commit, $(git -C "$top" rev-parse --short HEAD);" \
         "uncommitted changes stay here." >&2
  fi
  archive=${TMPDIR:-/tmp}/bigbigan_jax-$TPU_NAME.tar.gz
  run git -C "$top" archive --format=tar.gz --output="$archive" HEAD
  run gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:bigbigan_jax.tar.gz" \
    --zone="$ZONE" --worker=all
  on_workers all "rm -rf $REMOTE_CODE && mkdir -p $REMOTE_CODE && \
tar -xzf ~/bigbigan_jax.tar.gz -C $REMOTE_CODE && rm ~/bigbigan_jax.tar.gz && \
$REMOTE_WORKER install $PYTHON_VERSION"
  run rm -f "$archive"
}

train() {
  need WORKDIR gs://bucket/bigbigan/run1
  need TFDS_DATA_DIR gs://bucket/tensorflow_datasets
  local args=(--config="${CONFIG:-configs/imagenet128.py}" --workdir="$WORKDIR"
              --config.data.data_dir="$TFDS_DATA_DIR" "$@")
  local quoted
  printf -v quoted ' %q' "${args[@]}"
  on_workers all "$REMOTE_WORKER start$quoted"
}

delete_slice() {
  if [[ ${QUEUED:-0} == 1 ]]; then
    run gcloud compute tpus queued-resources delete "$TPU_NAME" --zone="$ZONE" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
  fi
}

# A spot slice or queued resource that was preempted does not come back: watch polls its state
# and, once it is preempted (or NOT_FOUND), runs delete, create, setup and train, each a fresh
# run of this script. A failed stage is retried after WATCH_INTERVAL (a failed create after a
# delete) until train has started; then polling resumes.
watch() {
  need ACCELERATOR v4-64
  need WORKDIR gs://bucket/bigbigan/run1
  need TFDS_DATA_DIR gs://bucket/tensorflow_datasets
  local describe=(gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE"
                  --format='value(state)')
  if [[ ${QUEUED:-0} == 1 ]]; then
    describe=(gcloud compute tpus queued-resources describe "$TPU_NAME" --zone="$ZONE"
              --format='value(state.state)')
  fi
  if [[ $DRY_RUN == 1 ]]; then  # The poll, then what a preemption triggers.
    run "${describe[@]}"
    delete_slice
    create
    setup
    train "$@"
    return
  fi
  local state todo=() stage
  while true; do
    if ((${#todo[@]} == 0)); then
      state=$("${describe[@]}" 2>&1) || { [[ $state == *NOT_FOUND* ]] && state=NOT_FOUND; } ||
        state=unknown
      case $state in
        PREEMPTED|TERMINATED|SUSPENDED|FAILED|NOT_FOUND)
          echo "$(date -u +%FT%TZ) $TPU_NAME is $state: recreating it" >&2
          todo=(delete create setup train) ;;
      esac
    fi
    while ((${#todo[@]})); do
      stage=${todo[0]}
      if [[ $stage == delete ]]; then
        bash "$0" delete || true
      elif ! bash "$0" "$stage" "$@"; then
        echo "$(date -u +%FT%TZ) $TPU_NAME: $stage failed; retrying" >&2
        [[ $stage == create ]] && todo=(delete "${todo[@]}")
        break
      fi
      todo=("${todo[@]:1}")
      if [[ $stage == train ]]; then
        echo "$(date -u +%FT%TZ) $TPU_NAME: training again" >&2
      fi
    done
    sleep "${WATCH_INTERVAL:-300}"
  done
}

case $COMMAND in
  create|setup|train|stop|status|logs|delete|watch) ;;
  *) usage ;;
esac
need TPU_NAME bigbigan
need ZONE us-central2-b
case $COMMAND in
  create) create ;;
  setup) setup ;;
  train) train "$@" ;;
  stop) on_workers all "$REMOTE_WORKER stop" ;;
  status)
    if [[ ${QUEUED:-0} == 1 ]]; then
      run gcloud compute tpus queued-resources describe "$TPU_NAME" --zone="$ZONE" \
        --format='value(state.state)'
    fi
    run gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" \
      --format='value(state,acceleratorType,runtimeVersion)'
    on_workers all "$REMOTE_WORKER status"
    ;;
  logs) on_workers "${WORKER:-0}" "tail -n 200 -F ~/bigbigan_run/train.log" ;;
  delete) delete_slice ;;
  watch) watch "$@" ;;
esac
