#!/usr/bin/env bash
# scripts/gpu_check.sh — the GPU check in one command (conf/gpu_check.yaml; docs/performance.md):
# environment + matmul peaks, Qwen2.5-0.5B (random weights) training speed with sdpa, flash-attention,
# gradient checkpointing and FSDP, SmolLM2 + MiniLM train -> export -> score on the GPU vs the CPU.
# Budgeted to finish in under 8 minutes on one H100/H200, offline; each step is killed past its budget
# (conf/gpu_check.yaml, steps.<name>.budget_s), recorded, and the next one runs:
#   environment 20 s | qwen_sdpa 70 s | qwen_flash_attention 55 s | qwen_grad_ckpt 65 s | qwen_fsdp 80 s
#   smollm2 110 s | minilm 70 s                                  = 470 s (budget_s: the whole check)
# Writes gpu_check.json + gpu_check.md into the run dir (outputs/gpu_check/<date>/<time>, or hydra.run.dir=<dir>).
#   scripts/gpu_check.sh                              the full GPU form
#   scripts/gpu_check.sh --cpu                        tiny sizes on the CPU (conf/gpu_check_cpu.yaml; what CI runs)
#   scripts/gpu_check.sh hydra.run.dir=/tmp/gc qwen.steps=50     any Hydra overrides after that
set -euo pipefail
cd "$(dirname "$0")/.."
config=gpu_check
if [[ "${1:-}" == "--cpu" ]]; then
  config=gpu_check_cpu
  shift
fi
export WANDB_MODE=offline HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" -m rmlab.bench.gpu_check --config-name "$config" "$@"
