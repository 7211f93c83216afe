#!/usr/bin/env bash
# The GPU benchmarks in one run (under 8 minutes on one H100/H200): training throughput of our Trainer.fit path vs
# the hand-written loop (fp32, bf16 autocast, torch.compile, dataset on the device or crossing the bus), the VAE
# and VQ-VAE through the same harness, the vector quantizer's forward+backward, and Stable Diffusion's VAE layout
# (AutoencoderKL with and without its discriminator) and a VQGAN at 256x256: images/s and peak memory in fp32,
# bf16, bf16 + compile.
#
#   benchmarks/gpu.sh DATA_DIR [OUT_DIR]      # DATA_DIR holds MNIST/raw (the official .gz files)
#
# Logs and JSON go to OUT_DIR (default benchmarks/results/gpu). Without a CUDA GPU it refuses (exit 2) before
# running anything. GPU_SH_SMOKE=1 runs every step on the CPU with tiny settings, two at a time and torch.compile
# with the aot_eager backend (the tests do; figures are meaningless then).
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: benchmarks/gpu.sh DATA_DIR [OUT_DIR]"
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "gpu.sh: $usage" >&2
    exit 2
fi
DATA=$1
OUT=${2:-benchmarks/results/gpu}
if [ ! -d "$DATA/MNIST/raw" ]; then
    echo "gpu.sh: $DATA/MNIST/raw not found: DATA_DIR must hold MNIST/raw ($usage)" >&2
    exit 2
fi
PY=${PYTHON:-python}

if [ "${GPU_SH_SMOKE:-0}" = 1 ]; then
    ACC=cpu; DEVICE=cpu; STEPS=2; REPEATS=1; ROUNDS=1; LIMIT=300; BACKEND=aot_eager  # traced, no codegen
    PARALLEL=2
else
    if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        echo "gpu.sh: no CUDA GPU visible to torch ($("$PY" -c 'import torch; print(torch.__version__)' 2>&1 | tail -1)); nothing run" >&2
        exit 2
    fi
    ACC=gpu; DEVICE=cuda; STEPS=300; REPEATS=5; ROUNDS=30; LIMIT=150; BACKEND=inductor
    PARALLEL=1  # timings: one benchmark at a time
fi
mkdir -p "$OUT"
start=$SECONDS

# one benchmark: NAME then the arguments of benchmarks/throughput.py; each bounded by LIMIT seconds
run_throughput() {
    local name=$1
    shift
    echo "== $name: throughput.py $*"
    timeout "$LIMIT" "$PY" benchmarks/throughput.py --data-dir "$DATA" --accelerator "$ACC" --steps "$STEPS" \
        --repeats "$REPEATS" --json "$OUT/$name.json" "$@" 2>&1 | grep -v '^INFO\|LeafSpec' | tee "$OUT/$name.log"
}
pids=()
throughput() {  # PARALLEL at a time (1 on a GPU); a failed one fails the script at the end
    if [ "$PARALLEL" = 1 ]; then
        run_throughput "$@"
        return
    fi
    run_throughput "$@" > /dev/null &
    pids+=($!)
    if [ "${#pids[@]}" -ge "$PARALLEL" ]; then
        wait "${pids[0]}"
        pids=("${pids[@]:1}")
    fi
}

"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" | tee "$OUT/device.log"
throughput ae_fp32_bus
throughput ae_fp32 --on-device
throughput ae_bf16 --on-device --precision bf16-mixed
throughput ae_bf16_compile --on-device --precision bf16-mixed --compile --compile-backend "$BACKEND"
throughput ae_fp32_batch512 --on-device --batch-size 512
throughput vae_bf16 --on-device --precision bf16-mixed --model vae
throughput vqvae_fp32 --on-device --model vqvae
throughput vqvae_bf16 --on-device --precision bf16-mixed --model vqvae
throughput vqvae_bf16_compile --on-device --precision bf16-mixed --model vqvae --compile --compile-backend "$BACKEND"
for pid in "${pids[@]}"; do wait "$pid"; done

impl=ours,minimal
if "$PY" -c "import vector_quantize_pytorch" 2>/dev/null; then impl=ours,vector-quantize-pytorch,minimal; fi
echo "== quantizer_speed.py ($impl)"
timeout "$LIMIT" "$PY" benchmarks/quantizer_speed.py --device "$DEVICE" --rounds "$ROUNDS" --iters 10 \
    --implementations "$impl" --out "$OUT/quantizer_speed.json" 2>&1 | tee "$OUT/quantizer_speed.log"

# the latent-diffusion autoencoders at 256x256 through Trainer.fit: Stable Diffusion's VAE layout (83.65M
# parameters), the same with its PatchGAN, and a taming f16 VQGAN; images/s and peak memory per precision
if [ "${GPU_SH_SMOKE:-0}" = 1 ]; then LDM=(--size 32 --batch 2 --small --warmup 1 --steps 1 --repeats 1); else LDM=(--size 256 --batch 8 --warmup 3 --steps 15 --repeats 2); fi
for variant in autoencoder_kl autoencoder_kl_gan vqgan; do
    for precision in fp32 bf16 bf16_compile; do
        flags=(--precision "${precision%%_compile}")
        if [ "$precision" = bf16_compile ]; then flags+=(--compile --compile-backend "$BACKEND"); fi
        echo "== ldm_step.py $variant $precision"
        timeout "$LIMIT" "$PY" benchmarks/ldm_step.py --variant "$variant" --device "$DEVICE" "${LDM[@]}" "${flags[@]}" \
            --json "$OUT/${variant}_$precision.json" 2>&1 | grep -v '^INFO\|LeafSpec\|Tip' | tee "$OUT/${variant}_$precision.log"
    done
done

echo "gpu.sh: done in $((SECONDS - start)) s; logs and JSON in $OUT"
