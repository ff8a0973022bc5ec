#!/usr/bin/env bash
# Cloud TPU VM pod slices: create, set up, train, follow logs, delete.
#
#   launch/tpu_vm.sh create              # TPU VM slice $TPU_NAME of type $ACCELERATOR
#   launch/tpu_vm.sh setup               # copy this repo to every worker and install it
#   launch/tpu_vm.sh train [flags...]    # start main.py on every worker (in tmux, survives ssh)
#   launch/tpu_vm.sh logs                # follow worker 0's log
#   launch/tpu_vm.sh delete
#
# Settings come from the environment. Every worker runs the same command; JAX finds the other
# hosts by itself on a TPU VM, and each process reads its own slice of the data. The workdir
# and the TFDS data_dir must be on GCS so that every host sees them.
set -euo pipefail

TPU_NAME=${TPU_NAME:?set TPU_NAME}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-64}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
CONFIG=${CONFIG:-configs/imagenet128.py}
WORKDIR=${WORKDIR:?set WORKDIR, e.g. gs://bucket/bigbigan/run1}
TFDS_DATA_DIR=${TFDS_DATA_DIR:?set TFDS_DATA_DIR, e.g. gs://bucket/tensorflow_datasets}

on_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}

case "${1:-}" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
    ;;
  setup)
    gcloud compute tpus tpu-vm scp --recurse --zone="$ZONE" --worker=all \
      "$(git rev-parse --show-toplevel)" "$TPU_NAME":~/bigbigan_jax
    on_all "cd ~/bigbigan_jax && python3 -m venv .venv && .venv/bin/pip install -q -U pip && \
      .venv/bin/pip install -q -e . 'jax[tpu]'"
    ;;
  train)
    shift
    on_all "cd ~/bigbigan_jax && tmux new-session -d -s train \
      '.venv/bin/python -m bigbigan_jax.main --config=$CONFIG --workdir=$WORKDIR \
       --config.data.data_dir=$TFDS_DATA_DIR $* 2>&1 | tee -a ~/train.log'"
    ;;
  logs)
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=0 --command="tail -f ~/train.log"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
    ;;
  *)
    sed -n '2,13p' "$0"
    exit 2
    ;;
esac
