#!/usr/bin/env bash
# Inside a Slurm allocation: start launch/train_node.sh once per node with srun, the head node as
# master, and requeue the job on USR1. Called by slurm/train.sbatch and slurm/ablation.sbatch:
#   bash slurm/srun_train.sh [--config NAME|FILE.yaml] [key.sub=value ...]
# USR1 is the warning the sbatch files ask Slurm for two minutes before the time limit
# (--signal=B:USR1@120); `scancel --batch --signal=USR1 JOBID` sends it by hand. A preemption under
# PreemptMode=REQUEUE, `scontrol requeue` or a node failure requeue the job (--requeue) without it.
# The job starts again with the same arguments, which end in resume=auto: it continues from its
# latest complete checkpoint. Ranks per node: NPROC_PER_NODE, else the node's GPUs, else 1 (a CPU node: one rank on
# all its allocated cores, measured faster than a rank per core).
set -euo pipefail
: "${SLURM_JOB_ID:?run inside a Slurm job, e.g. sbatch slurm/train.sbatch --config default}"
NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)}
# from the job id: the same on every node, different for jobs (and array tasks) sharing a node
MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
NPROC_PER_NODE=${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
export NNODES MASTER_ADDR MASTER_PORT NPROC_PER_NODE
unset NODE_RANK  # each node takes its own from SLURM_NODEID (a value from the submitting shell would be wrong)

echo "rm_ds: job ${SLURM_JOB_ID}${SLURM_ARRAY_TASK_ID:+ (array task ${SLURM_ARRAY_JOB_ID}_$SLURM_ARRAY_TASK_ID)}, start" \
  "$((${SLURM_RESTART_COUNT:-0} + 1)), $NNODES node(s) x $NPROC_PER_NODE ranks, master $MASTER_ADDR:$MASTER_PORT," \
  "$(date '+%F %T')"
# an array task by ARRAYJOB_TASK: a bare SLURM_JOB_ID can be the array's id, which requeues every task
job=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}
job=${job:-$SLURM_JOB_ID}
trap 'echo "rm_ds: USR1 at $(date +%T): requeueing job $job; it resumes from its latest checkpoint"
      scontrol requeue "$job"' USR1
trap 'kill -TERM "$pid" 2>/dev/null' TERM INT

step_args=(--nodes="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1)
# since Slurm 22.05 srun does not inherit --cpus-per-task from sbatch
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then step_args+=(--cpus-per-task="$SLURM_CPUS_PER_TASK"); fi
# in the background, so the traps run as soon as a signal comes (bash defers them during a foreground child)
srun "${step_args[@]}" bash launch/train_node.sh "$@" &
pid=$!
rc=0
while :; do
  wait "$pid" && rc=0 || rc=$?
  kill -0 "$pid" 2>/dev/null || break  # still running: wait was cut short by a signal
done
exit "$rc"
