#!/usr/bin/env bash
# The gold-labelled proxy-RM pipeline in one command: sample -> label -> train -> match.
#   bash launch/proxy_rm.sh [key.sub=value ...]        (overrides go to the proxy's `rm-ds train --config proxy`)
# The proxy is trained with --config proxy (the published recipe) plus PROXY_OVERRIDES, by default
#   train.global_batch_pairs=16 train.lr=1e-4 train.epochs=3 model.dtype=bf16-mixed model.attn_implementation=eager
#   deepspeed.config=zero0 data.pref_field=gold_pref
# because the published global batch 64 x one epoch on ~300 pairs is ~5 optimizer steps (the proxy stays
# near chance), and the gold's own probability as a soft label (gold_pref, written by rm-ds label) generalised
# better than hard winners here (docs/proxy.md); eager attention because CPU SDPA's backward under
# bf16 autocast was slower. PROXY_OVERRIDES= (empty) trains the published recipe as shipped.
# The proxy's training runs no eval: rm-ds match scores the held-out prompts right after (the same pairs, in bf16),
# where an fp32 eval inside training would repeat that for ~50 s; add data.eval_path=... to have it anyway.
# Environment: PROMPTS (training prompts, default 300), HELDOUT (held-out prompts, 300), N (responses per
# prompt, 2), MAX_NEW_TOKENS (48), SEED (0), GOLD (gold RM folder; default runs/default/export/final, trained
# by the default run first if absent), POLICY (builtin:smollm2), OUT (runs/proxy), NPROC (ranks, 1: on a CPU
# machine one rank on every core trained fastest, docs/performance.md "Launch layout").
# Prompts are WordNet's (builtin:wordnet/train for training, builtin:wordnet/eval held out: disjoint words).
# Every stage is resumable or idempotent: rerunning after a kill continues.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${RM_DS_SKIP_SETUP:-}" ] || bash launch/setup.sh
# shellcheck source=launch/env.sh
. launch/env.sh
PROMPTS=${PROMPTS:-300} HELDOUT=${HELDOUT:-300} N=${N:-2} MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-48} SEED=${SEED:-0}
GOLD=${GOLD:-runs/default/export/final} POLICY=${POLICY:-builtin:smollm2} OUT=${OUT:-runs/proxy} NPROC=${NPROC:-1}
PROXY_OVERRIDES=${PROXY_OVERRIDES-train.global_batch_pairs=16 train.lr=1e-4 train.epochs=3 model.dtype=bf16-mixed model.attn_implementation=eager deepspeed.config=zero0 data.pref_field=gold_pref}
read -r -a proxy_overrides <<< "$PROXY_OVERRIDES"  # space-separated key=value words; empty: none
# label and match are single processes: every core (also what rm_ds.cluster.dist.set_threads picks when nothing is set)
CORES=$(nproc --all)
mkdir -p "$OUT"
start=$(date +%s)
ranks() { deepspeed --num_gpus "$NPROC" --master_addr 127.0.0.1 --master_port "$(free_port)" --module rm_ds.cli "$@"; }
stage() { echo "== proxy_rm: $* ($(( $(date +%s) - start )) s)"; }

if [ ! -f "$GOLD/config.json" ]; then
  stage "training the gold RM (the default run) into runs/default"
  ranks train --config default logging.run_dir=runs/default
  GOLD=runs/default/export/final
fi

for split in train heldout; do
  if [ "$split" = train ]; then src=builtin:wordnet/train n=$PROMPTS; else src=builtin:wordnet/eval n=$HELDOUT; fi
  stage "sampling $n $split prompts x $N from $POLICY"
  ranks sample --prompts "$src" --max-prompts "$n" --out "$OUT/${split}_samples.jsonl" --model "$POLICY" \
    --num-responses "$N" --temperature 1.0 --top-p 1.0 --max-new-tokens "$MAX_NEW_TOKENS" --seed "$SEED" --batch-size 32
  stage "labelling $split responses with the gold RM $GOLD"
  OMP_NUM_THREADS=$CORES python -m rm_ds.cli label --gold "$GOLD" --samples "$OUT/${split}_samples.jsonl" \
    --out-scored "$OUT/${split}_labelled.jsonl" --out-pairs "$OUT/${split}_pairs.jsonl"
done

stage "training the proxy RM (--config proxy)"
ranks train --config proxy data.train_path="$OUT/train_pairs.jsonl" data.eval_path=null \
  logging.run_dir="$OUT/rm" "${proxy_overrides[@]}" "$@"

stage "matching proxy against gold"
# the proxy scores under bf16 autocast (AMX matmuls; rewards within ~1e-3 of fp32); the gold labels in fp32
OMP_NUM_THREADS=$CORES python -m rm_ds.cli match --proxy "$OUT/rm/export/final" --heldout "$OUT/heldout_labelled.jsonl" \
  --train "$OUT/train_labelled.jsonl" --out "$OUT/match" --dtype bf16 | tee "$OUT/match.txt"
stage "done"
grep "held-out match rate" "$OUT/match.txt"
