#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one task per node, each task drives all GPUs of its node.
#
#   sbatch launch/slurm.sh                                   # the defaults below
#   sbatch --nodes=4 launch/slurm.sh configs/deeplabv3_voc.py:variant=resnet101 /shared/runs/dlv3
#   sbatch launch/slurm.sh configs/quickstart.py /shared/runs/q --config.train.batch_size=64
#
# Arguments: CONFIG (default below), WORKDIR (default below), then any extra segjax.train flags.
# WORKDIR must be on a filesystem every node sees (NFS, Lustre, ...): checkpoints are written
# collectively by all processes. JAX's SLURM detection (SLURM_NTASKS > 1, see
# segjax.sharding.maybe_initialize_distributed) starts the multi-process runtime; the
# coordinator is the first node of the allocation.
#
# Preemption: --signal=TERM@120 makes SLURM send SIGTERM to every task 120 s before the time
# limit; segjax then saves a checkpoint at the current step and exits with code 0. Submitting
# the same script again (or `sbatch --dependency=afterany:$SLURM_JOB_ID launch/slurm.sh ...`
# for a chain of jobs) resumes from the latest complete checkpoint. With --requeue, a job
# preempted by the scheduler is restarted and resumes the same way.
#
#SBATCH --job-name=segjax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=segjax-%j.out
set -euo pipefail

CONFIG="${1:-configs/deeplabv3_voc.py:variant=resnet50}"
WORKDIR="${2:-$HOME/segjax_runs/${SLURM_JOB_NAME:-segjax}}"
shift $(($# < 2 ? $# : 2))
# The repository checkout (sbatch runs a copy of this script, so use the submit directory) and
# its Python environment.
REPO_DIR="${REPO_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}"
VENV="${VENV:-$REPO_DIR/.venv}"

cd "$REPO_DIR"
if [[ -f "$VENV/bin/activate" ]]; then
  # shellcheck disable=SC1091
  source "$VENV/bin/activate"
fi
# segjax hides the GPUs from TensorFlow (tf.data only); XLA may take most of GPU memory.
export TF_CPP_MIN_LOG_LEVEL=3
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
# glibc's huge-page tunable for the host heap (appended to GLIBC_TUNABLES; srun passes it on).
# shellcheck source=launch/huge_pages.sh
source "$REPO_DIR/launch/huge_pages.sh"

echo "job ${SLURM_JOB_ID:-?}: ${SLURM_JOB_NUM_NODES:-?} nodes, config $CONFIG, workdir $WORKDIR"
# srun starts one task per node; SIGTERM from --signal reaches each of them.
srun --kill-on-bad-exit=1 python -m segjax.train --config "$CONFIG" --workdir "$WORKDIR" "$@"
