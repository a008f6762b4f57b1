#!/usr/bin/env bash
# Training on a Cloud TPU pod slice: (optionally) create the TPU VM, then on every worker at
# once clone or update segjax, install it, mount the run bucket and start `python -m
# segjax.train`. Every worker runs the same command; JAX detects the pod (TPU_WORKER_HOSTNAMES,
# see segjax.sharding.maybe_initialize_distributed) and forms one multi-host job.
#
#   launch/tpu_pod.sh create        # create the TPU VM (spot), then run
#   launch/tpu_pod.sh               # (re)start on an existing TPU VM; resumes from the workdir
#   launch/tpu_pod.sh run --config.train.batch_size=64       # extra segjax.train flags
#   launch/tpu_pod.sh logs          # follow the log of worker 0
#   launch/tpu_pod.sh stop          # SIGTERM on all workers: checkpoint now, then exit
#   launch/tpu_pod.sh delete        # delete the TPU VM
#
# Training runs in the background on each worker (log ~/segjax_train.log, PID in
# ~/segjax_train.pid), so closing this terminal does not stop it.
#
# Edit the variables below or set them in the environment.
#
# Workdir: checkpoints are written collectively by all hosts into one directory, which must be
# shared storage. segjax reads and writes the workdir through the local filesystem, so the
# bucket is mounted with Cloud Storage FUSE (gcsfuse) at the same path on every worker; the
# workdir is MOUNT_POINT/RUN_NAME (gs://BUCKET/RUN_NAME). Use a bucket with hierarchical
# namespace if you can: Orbax finalises a checkpoint by renaming its directory, which is atomic
# there (on a flat bucket gcsfuse renames by copying, allowed by --rename-dir-limit).
#
# Preemption (spot TPUs): a preempted VM's processes get SIGTERM; the hosts agree on a step
# (JAX's preemption sync service, or an all-gather of the SIGTERM flags), save a checkpoint
# there together and exit with code 0. `launch/tpu_pod.sh create` after the VM is gone (or
# `run` on a VM that came back) resumes from that checkpoint.
set -euo pipefail

TPU_NAME="${TPU_NAME:-segjax-pod}"
ZONE="${ZONE:-us-central2-b}"
PROJECT="${PROJECT:-my-gcp-project}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
SPOT="${SPOT:-1}"                                   # 1: create a spot (preemptible) TPU
REPO_URL="${REPO_URL:-https://github.com/your-org/segjax.git}"
BRANCH="${BRANCH:-main}"
CONFIG="${CONFIG:-configs/deeplabv3_voc.py:variant=resnet50}"
BUCKET="${BUCKET:-my-segjax-bucket}"                # gs://BUCKET holds runs (and data)
RUN_NAME="${RUN_NAME:-deeplabv3_r50_voc}"
MOUNT_POINT="${MOUNT_POINT:-/mnt/segjax}"
WORKDIR="${WORKDIR:-$MOUNT_POINT/$RUN_NAME}"        # = gs://$BUCKET/$RUN_NAME
DATA_DIR="${DATA_DIR:-$MOUNT_POINT/tensorflow_datasets}"  # prepared TFDS data in the bucket
JAX_PACKAGE="${JAX_PACKAGE:-jax[tpu]}"

gcloud_tpu() {
  gcloud compute tpus tpu-vm "$@" --zone="$ZONE" --project="$PROJECT"
}

on_all_workers() {
  gcloud_tpu ssh "$TPU_NAME" --worker=all --command="$1"
}

create() {
  local spot=()
  if [[ "$SPOT" == 1 ]]; then
    spot=(--spot)
  fi
  gcloud_tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" \
    --version="$RUNTIME_VERSION" "${spot[@]}"
}

run() {
  local extra=""
  if (($# > 0)); then
    extra="$(printf ' %q' "$@")"
  fi
  # Everything below runs on each worker, in parallel; ~ is the worker's home directory.
  on_all_workers "
set -euo pipefail
if [[ -d ~/segjax/.git ]]; then
  git -C ~/segjax fetch --quiet origin $(printf %q "$BRANCH")
  git -C ~/segjax checkout --quiet FETCH_HEAD
else
  git clone --quiet --branch $(printf %q "$BRANCH") $(printf %q "$REPO_URL") ~/segjax
fi
cd ~/segjax
if [[ ! -d .venv ]]; then python3 -m venv .venv; fi
. .venv/bin/activate
pip install --quiet --upgrade pip
pip install --quiet -e . $(printf %q "$JAX_PACKAGE")
if ! mountpoint -q $(printf %q "$MOUNT_POINT"); then
  sudo mkdir -p $(printf %q "$MOUNT_POINT")
  sudo chown \"\$USER\" $(printf %q "$MOUNT_POINT")
  gcsfuse --implicit-dirs --rename-dir-limit=200000 $(printf %q "$BUCKET") \
    $(printf %q "$MOUNT_POINT")
fi
if [[ -f ~/segjax_train.pid ]] && kill -0 \"\$(cat ~/segjax_train.pid)\" 2>/dev/null; then
  echo \"segjax.train is already running on \$(hostname)\" >&2
  exit 1
fi
source launch/huge_pages.sh  # glibc's huge-page tunable for the host heap
nohup python -m segjax.train --config $(printf %q "$CONFIG") --workdir $(printf %q "$WORKDIR") \
  --config.data.data_dir=$(printf %q "$DATA_DIR")$extra >~/segjax_train.log 2>&1 </dev/null &
echo \$! >~/segjax_train.pid
echo \"started segjax.train on \$(hostname) (pid \$!)\"
"
}

logs() {
  gcloud_tpu ssh "$TPU_NAME" --worker=0 --command="tail -n 50 -f ~/segjax_train.log"
}

stop() {
  on_all_workers "if [[ -f ~/segjax_train.pid ]]; then kill -TERM \"\$(cat ~/segjax_train.pid)\" || true; fi"
}

delete() {
  gcloud_tpu delete "$TPU_NAME" --quiet
}

command="${1:-run}"
if (($# > 0)); then
  shift
fi
case "$command" in
  create) create && run "$@" ;;
  run) run "$@" ;;
  logs) logs ;;
  stop) stop ;;
  delete) delete ;;
  *)
    echo "usage: $0 [create|run|logs|stop|delete] [segjax.train flags...]" >&2
    exit 2
    ;;
esac
