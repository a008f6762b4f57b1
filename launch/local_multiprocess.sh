#!/usr/bin/env bash
# Runs segjax.train as NUM_PROCESSES local processes that form one multi-process JAX job over
# localhost, each with DEVICES_PER_PROCESS fake CPU devices: the multi-host code path (process
# 0 coordinates, every process feeds its own rows, checkpoints are saved collectively) on one
# machine. The tests use it; it is also a quick way to try a pod-style run on a laptop.
#
#   NUM_PROCESSES=2 DEVICES_PER_PROCESS=4 launch/local_multiprocess.sh \
#       --config configs/quickstart.py:runlocal --workdir /tmp/mp_run
#
# Arguments are passed to `python -m $SEGJAX_MODULE` (segjax.train) unchanged. Each process gets
# SEGJAX_COORDINATOR=localhost:PORT, SEGJAX_NUM_PROCESSES and SEGJAX_PROCESS_ID, which
# segjax.sharding.maybe_initialize_distributed reads. Process 0 writes to this terminal, the
# others to LOG_DIR/process_<i>.log. The script waits for all processes; if one fails, the
# others are killed and the script exits with the failing process's code. SIGTERM/SIGINT are
# forwarded to every process (segjax checkpoints at the current step and exits). Needs bash 5.1+.
#
# Every process runs with glibc's huge-page tunable appended to GLIBC_TUNABLES
# (launch/huge_pages.sh).
#
# Environment (defaults): NUM_PROCESSES (2), DEVICES_PER_PROCESS (4), COORDINATOR_PORT (a free
# port), PYTHON (python3), LOG_DIR (a new temporary directory), SEGJAX_MODULE (segjax.train;
# e.g. segjax.evaluate).
set -euo pipefail

NUM_PROCESSES="${NUM_PROCESSES:-2}"
DEVICES_PER_PROCESS="${DEVICES_PER_PROCESS:-4}"
PYTHON="${PYTHON:-python3}"
SEGJAX_MODULE="${SEGJAX_MODULE:-segjax.train}"
LOG_DIR="${LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/segjax_multiprocess.XXXXXX")}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! [[ "$NUM_PROCESSES" =~ ^[1-9][0-9]*$ && "$DEVICES_PER_PROCESS" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: NUM_PROCESSES ($NUM_PROCESSES) and DEVICES_PER_PROCESS" \
    "($DEVICES_PER_PROCESS) must be positive integers" >&2
  exit 2
fi
if [[ -z "${COORDINATOR_PORT:-}" ]]; then
  COORDINATOR_PORT="$("$PYTHON" -c 'import socket
s = socket.socket()
s.bind(("localhost", 0))
print(s.getsockname()[1])')"
fi
mkdir -p "$LOG_DIR"
# shellcheck source=launch/huge_pages.sh
source "$REPO_ROOT/launch/huge_pages.sh"

# Fake CPU devices: drop any device-count flag already in XLA_FLAGS, then set ours.
xla_flags=""
for flag in ${XLA_FLAGS:-}; do
  [[ "$flag" == --xla_force_host_platform_device_count=* ]] || xla_flags+="$flag "
done
xla_flags+="--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS"

declare -A index_of=()
for ((i = 0; i < NUM_PROCESSES; i++)); do
  (
    export XLA_FLAGS="$xla_flags" JAX_PLATFORMS=cpu
    export SEGJAX_COORDINATOR="localhost:$COORDINATOR_PORT"
    export SEGJAX_NUM_PROCESSES="$NUM_PROCESSES" SEGJAX_PROCESS_ID="$i"
    export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
    if ((i == 0)); then
      exec "$PYTHON" -m "$SEGJAX_MODULE" "$@"
    else
      exec "$PYTHON" -m "$SEGJAX_MODULE" "$@" >"$LOG_DIR/process_$i.log" 2>&1
    fi
  ) &
  index_of[$!]=$i
done
echo "started $NUM_PROCESSES processes x $DEVICES_PER_PROCESS CPU devices" \
  "(coordinator localhost:$COORDINATOR_PORT, logs of processes 1.. in $LOG_DIR)" >&2

signal_all() {
  local pid
  for pid in "${!index_of[@]}"; do
    kill -s "$1" "$pid" 2>/dev/null || true
  done
}
trap 'signal_all TERM' TERM
trap 'signal_all INT' INT

status=0
failed=""
while ((${#index_of[@]} > 0)); do
  finished=""
  code=0
  wait -n -p finished "${!index_of[@]}" || code=$?
  [[ -n "$finished" ]] || continue # woken by a trapped signal: keep waiting
  i="${index_of[$finished]}"
  unset "index_of[$finished]"
  if ((code != 0 && status == 0)); then
    status=$code
    failed=$i
    # The others would block in their next collective (or collective checkpoint) waiting
    # for the failed process, so they are stopped at once; the last checkpoint is intact.
    signal_all KILL
  fi
done

if ((status != 0)); then
  echo "error: process $failed exited with code $status" >&2
  if [[ "$failed" != 0 && -f "$LOG_DIR/process_$failed.log" ]]; then
    echo "--- last lines of $LOG_DIR/process_$failed.log ---" >&2
    tail -n 20 "$LOG_DIR/process_$failed.log" >&2
  fi
fi
exit "$status"
