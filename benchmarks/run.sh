#!/usr/bin/env bash
# Run qwq_local's benchmarks on the tiny models and keep their output under benchmarks/out/ (not committed).
# Usage: benchmarks/run.sh [engine|chat|accuracy|all] [LIMIT]
#        STRATEGIES=direct,sc@4,bon@4,astar:self-eval+rules benchmarks/run.sh accuracy 100   (a subset)
#   engine    KV tree vs naive re-prefill and batched decode vs raw llama.cpp   (~4 min on 2 cores)
#   chat      qwq's decode tok/s vs create_completion, 2nd-turn prompt evaluation  (~1 min)
#   accuracy  GSM8K, first LIMIT problems (default 100), eight strategies        (~5 min a problem on 2 cores)
# The accuracy run is resumable: run it again and it goes on from its results file.
set -euo pipefail
cd "$(dirname "$0")"
what=${1:-all}
limit=${2:-100}
strategies=${STRATEGIES:-direct,sc@4,bon@4,sc@8,bon@8,astar:self-eval+rules,astar:qhead,astar:qhead+rules}
mkdir -p out
stamp() { echo "# $(date -u +%FT%TZ) · $(nproc) cores · $(uname -m)"; }

if [[ $what == engine || $what == all ]]; then
  { stamp; qwq bench engine; } | tee out/engine.txt
fi
if [[ $what == chat || $what == all ]]; then
  { stamp; qwq bench chat; } | tee out/chat.txt
fi
if [[ $what == accuracy || $what == all ]]; then
  stamp | tee -a out/accuracy.txt
  qwq bench accuracy --data gsm8k --limit "$limit" --model qwen2.5-coder-0.5b \
    --strategy "$strategies" \
    -K 4 -N 3 -B 8 --max-expansions 12 --time-limit 90 --max-tokens 512 --ctx 4096 \
    --results out/gsm8k.jsonl --plot out/gsm8k.png | tee -a out/accuracy.txt
fi
