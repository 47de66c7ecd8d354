#!/usr/bin/env bash
# Everything a lent GPU should measure, in two parts sized for the 15 minutes of device time a
# session gets (each part is one device call of at most 5.5 minutes; run them back to back so
# that the machine stays warm). Writes the figures and a Breakout learning curve under
# ${OUT:-bench/results/gpu}; paste them into bench/RESULTS.md with the card's name.
#
#     bash bench/gpu_check.sh core     # correctness on the device, then core speed (issue 8)
#     bash bench/gpu_check.sh atari    # Atari steps/s and a short learning run (issue 4)
#     bash bench/gpu_check.sh graphs   # --rims-graphs: correctness, Atari steps/s, core speed,
#                                      # a short learning run (about 6.5 minutes)
#     bash bench/gpu_check.sh kernels  # fewer kernels per step: correctness, the kernel count
#                                      # and a profile on the device, core speed with and
#                                      # without Inductor's max-autotune (about 9 minutes)
#     bash bench/gpu_check.sh tf32     # like for like with cuDNN (TF32 products), and two
#                                      # Inductor fusion settings (about 6 minutes)
#     bash bench/gpu_check.sh step     # --rims-triton and the compiled step without baddbmm:
#                                      # correctness, the kernels step by step, core speed with
#                                      # TF32 and without, a DoorKey run and rims eval on the
#                                      # GPU (about 7 minutes; the timeouts add up to 560 s)
#     bash bench/gpu_check.sh          # core and atari
#
# Without the `rims` console script (the package not installed there), `python train.py` runs.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results/gpu}"
part="${1:-all}"
mkdir -p "$out"
if command -v rims >/dev/null; then rims=(rims); else rims=(python train.py); fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    | tee -a "$out/card.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
    | tee -a "$out/card.txt"
# The imports every step needs; fail at once (not after minutes of timeouts) when one is missing.
python -c "import gymnasium, minigrid, ale_py, agents.trainer, policies, envs.factory" || exit 1

# learning_run NAME SECONDS STEPS [FLAGS...]: RIMs on Breakout (32 envs, the learning rate
# annealed over STEPS) for at most SECONDS (SIGTERM at the limit: the run stops after its step
# and saves), then its curve as NAME.png and its scalars beside it; its checkpoints (and the
# folder) stay behind.
learning_run() {
    local name=$1 seconds=$2 steps=$3
    shift 3
    timeout -k 20 "$seconds" "${rims[@]}" train --env ALE/Breakout-v5 --device cuda \
        --num-envs 32 --total-steps "$steps" --run-dir "$out/$name" --overwrite --no-progress \
        "$@" 2>&1 | tail -4 | tee "$out/$name.txt"
    "${rims[@]}" plot "$out/$name" --out "$out/$name.png" 2>&1 | tee -a "$out/$name.txt"
    cp "$out/$name"/events.out.tfevents.* "$out/" 2>/dev/null
    rm -rf "${out:?}/$name"
}

if [[ $part == core || $part == all ]]; then
    # 1. Correctness on the device, before any timing (compiles Triton kernels for two cells).
    timeout -k 10 150 python bench/cuda_check.py 2>&1 | tee "$out/cuda_check.txt"
    # 2. Core speed at B=64, T=128 (issue 8's targets): eager, bf16, compiled and CUDA-graph
    #    rows against cuDNN nn.LSTM(600). The compiled rows compile in their warm-up calls.
    timeout -k 10 170 python bench/core_speed.py --device cuda --batch 64 --repeats 10 2>&1 \
        | tee "$out/core_speed.txt"
fi

if [[ $part == atari || $part == all ]]; then
    # 3. Atari training steps/s (the steady figure leaves out the first update's warm-up):
    #    the preset's 8 envs, then 64 envs.
    timeout -k 10 60 python bench/atari_sps.py --device cuda --updates 6 --cores rims lstm \
        2>&1 | tee "$out/atari_sps_8.txt"
    timeout -k 10 75 python bench/atari_sps.py --device cuda --updates 4 --num-envs 64 \
        --cores rims lstm 2>&1 | tee "$out/atari_sps_64.txt"
    # 4. A short learning run on Breakout with RIMs, and its curve.
    learning_run breakout_rims 120 1000000
fi

if [[ $part == graphs ]]; then
    # 5. CUDA graphs (--rims-graphs): replays agree with the eager core, then what they buy.
    timeout -k 10 70 python bench/cuda_check.py --only graphs 2>&1 | tee "$out/cuda_check_graphs.txt"
    timeout -k 10 80 python bench/atari_sps.py --device cuda --updates 6 \
        --cores rims-graphs rims-compile-graphs lstm 2>&1 | tee "$out/atari_sps_8_graphs.txt"
    timeout -k 10 80 python bench/atari_sps.py --device cuda --updates 4 --num-envs 64 \
        --cores rims-graphs rims-compile-graphs lstm 2>&1 | tee "$out/atari_sps_64_graphs.txt"
    timeout -k 10 60 python bench/core_speed.py --device cuda --batch 64 --repeats 10 \
        --cores "rims-lstm drop 0" "rims-lstm d0 graphs" "rims-lstm d0 comp graphs" \
        "rims-lstm d0 bf16 comp graphs" 2>&1 | tee "$out/core_speed_graphs.txt"
    learning_run breakout_graphs 90 2000000 --rims-compile --rims-graphs
fi

if [[ $part == kernels ]]; then
    # 6. Fewer kernels per step (issue 8; bench/step_kernels.py): the device still computes what
    #    the CPU does (the counted-rank selection and the moved resets run compiled there); how
    #    many kernels a compiled step launches on the device and where its time goes (a profile
    #    without graphs); what that buys at the target's shape; and what Inductor's max-autotune
    #    (Triton matmuls that can take the pointwise ops around them in) adds to it.
    timeout -k 10 150 python bench/cuda_check.py 2>&1 | tee "$out/cuda_check.txt"
    timeout -k 10 150 python bench/step_kernels.py --device cuda --cells lstm --names --profile \
        2>&1 | tee "$out/step_kernels.txt"
    timeout -k 10 100 python bench/core_speed.py --device cuda --batch 64 --repeats 10 \
        --cores "rims-lstm d0 graphs" "rims-lstm d0 comp graphs" "rims-lstm d0 bf16 comp graphs" \
        2>&1 | tee "$out/core_speed_kernels.txt"
    timeout -k 10 150 python bench/core_speed.py --device cuda --batch 64 --repeats 10 \
        --cores "rims-lstm d0 comp graphs" "rims-lstm d0 bf16 comp graphs" \
        --inductor max_autotune=True 2>&1 | tee "$out/core_speed_autotune.txt"
fi

if [[ $part == tf32 ]]; then
    # 7. cuDNN's nn.LSTM runs its float32 products on TF32 tensor cores by default; the RIMs'
    #    per-step matmuls (cuBLAS) stay float32 unless --tf32. Time both that way (core_speed
    #    also times cuDNN in full float32). Then whether Inductor, told not to split
    #    reductions or to fuse more aggressively, launches fewer of its ~19 kernels per step on
    #    a GPU (12 on a CPU), and the Atari steps/s with TF32.
    timeout -k 10 120 python bench/core_speed.py --device cuda --batch 64 --repeats 10 --tf32 \
        --cores "rims-lstm d0 graphs" "rims-lstm d0 comp graphs" "rims-lstm d0 bf16 comp graphs" \
        2>&1 | tee "$out/core_speed_tf32.txt"
    timeout -k 10 100 python bench/core_speed.py --device cuda --batch 64 --repeats 10 \
        --cores "rims-lstm d0 comp graphs" "rims-lstm d0 bf16 comp graphs" \
        --inductor split_reductions=False 2>&1 | tee "$out/core_speed_nosplit.txt"
    timeout -k 10 80 python bench/core_speed.py --device cuda --batch 64 --repeats 10 \
        --cores "rims-lstm d0 comp graphs" --inductor aggressive_fusion=True 2>&1 \
        | tee "$out/core_speed_aggressive.txt"
    timeout -k 10 90 python bench/atari_sps.py --device cuda --updates 4 --num-envs 64 --tf32 \
        --cores rims-compile-graphs lstm 2>&1 | tee "$out/atari_sps_64_tf32.txt"
fi

if [[ $part == step ]]; then
    # 8. The hand-written Triton steps (--rims-triton, policies/triton_kernels.py) and the
    #    compiled step without baddbmm (commit 20d39a7): each equal to eager steps on the
    #    device, graphs included; the kernels step by step against the library's steps, timed
    #    and profiled; the core at issue 8's shape with TF32 on both sides and in full float32;
    #    a short DoorKey run through the kernels, evaluated while it trains (--eval-every: the
    #    CUDA generator forked; --centre-features --centre-keep-size: its running mean and size
    #    factor on the device), and rims eval of it on the GPU and the CPU. The kernels are
    #    timed at 2, 4 and 8 warps (triton_steps.NUM_WARPS is 4 until then).
    #    The timeouts add up to 575 s, under the 600 s one device call may take.
    timeout -k 10 90 python bench/cuda_check.py --only triton 2>&1 \
        | tee "$out/cuda_check_triton.txt"
    timeout -k 10 45 python bench/cuda_check.py --only compiled 2>&1 \
        | tee "$out/cuda_check_compiled.txt"
    timeout -k 10 150 python bench/triton_step.py --device cuda --check --time --warps 2 4 8 \
        --profile 2>&1 | tee "$out/triton_step.txt"
    rows=("rims-lstm d0 comp graphs" "rims-lstm d0 triton graphs" "rims-lstm d0 bf16 triton graphs")
    timeout -k 10 100 python bench/core_speed.py --device cuda --batch 64 --repeats 10 --tf32 \
        --cores "${rows[@]}" 2>&1 | tee "$out/core_speed_tf32.txt"
    timeout -k 10 70 python bench/core_speed.py --device cuda --batch 64 --repeats 10 \
        --cores "${rows[@]}" 2>&1 | tee "$out/core_speed_fp32.txt"
    timeout -k 10 60 "${rims[@]}" train --device cuda --total-steps 4096 --run-dir "$out/run" \
        --overwrite --no-progress --rims-triton --centre-features --centre-keep-size \
        --eval-every 1 --eval-episodes 8 2>&1 | tail -4 \
        | tee "$out/eval_gpu.txt"
    for device in cuda cpu; do
        timeout -k 10 30 "${rims[@]}" eval "$out/run" --device "$device" --episodes 20 2>&1 \
            | tail -3 | tee -a "$out/eval_gpu.txt"
    done
    rm -rf "${out:?}/run"
fi
