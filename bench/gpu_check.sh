#!/usr/bin/env bash
# Everything a lent GPU should measure, in one go (at most 11 minutes of commands, so that with
# the machine's start it fits the 15 minutes of device time a session gets). Writes the
# figures and a Pong learning curve under ${OUT:-bench/results/gpu}; paste them into
# bench/RESULTS.md with the card's name.
#
#     bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results/gpu}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/card.txt"
# 1. Correctness on the device, before any timing.
timeout 120 python bench/cuda_check.py 2>&1 | tee "$out/cuda_check.txt"
# 2. Core speed: rollout step at B=64, forward+backward over T=128 (issue targets in RESULTS).
#    The compiled rows compile first (Triton), in the warm-up calls.
timeout 160 python bench/core_speed.py --device cuda --repeats 10 2>&1 | tee "$out/core_speed.txt"
# 3. Atari training steps/s for rims (float32, bf16 products, compiled steps) and lstm (8 and 64
#    envs).
timeout 120 python bench/atari_sps.py --device cuda --updates 6 \
    --cores rims rims-bf16 rims-compile lstm 2>&1 | tee "$out/atari_sps_8.txt"
timeout 80 python bench/atari_sps.py --device cuda --updates 4 --num-envs 64 --cores rims lstm \
    2>&1 | tee "$out/atari_sps_64.txt"
timeout 50 python bench/atari_sps.py --device cuda --updates 4 --cores rims --bptt 32 \
    2>&1 | tee "$out/atari_sps_8_bptt32.txt"
# 4. A short learning run on Pong with RIMs, and its curve.
timeout 110 rims train --env ALE/Pong-v5 --device cuda --num-envs 64 --total-steps 2000000 \
    --run-dir "$out/pong_rims" --overwrite --no-progress 2>&1 | tail -3 | tee "$out/pong.txt"
rims plot "$out/pong_rims" --out "$out/pong_rims.png" 2>&1 | tee -a "$out/pong.txt"
