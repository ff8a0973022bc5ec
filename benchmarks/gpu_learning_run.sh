#!/usr/bin/env bash
# The embedded default's learning curve on one GPU (issue 20); benchmarks/gpu_learning_run.py
# runs it and says what it does.
#   1. here:         bash benchmarks/gpu_learning_run.sh prepare
#                    (ml_collections' wheels -> .wheels, as the GPU check's; Fashion-MNIST's .npz
#                    caches and the garment classifier -> .gpu_data: the GPU machine has neither
#                    the dataset's files nor TensorFlow)
#   2. device tool:  run(command="bash benchmarks/gpu_learning_run.sh",
#                        carry=[".wheels", ".gpu_data"], timeout_s=600)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PYTHON=${PYTHON:-python3}
DATA=${DATA:-.gpu_data}

if [[ "${1:-}" == prepare ]]; then
  PYTHON=$PYTHON bash benchmarks/gpu_check.sh fetch || exit 1
  exec "$PYTHON" - "$DATA" <<'PY'
import sys
from bigbigan_jax import in_memory
from bigbigan_jax.evaluation import garment_classifier
from configs import fashion_mnist
config = fashion_mnist.get_config()
config.data.cache_dir = sys.argv[1]
for split in ('train', 'test'):
  in_memory.load_split(config, split)  # Writes the split's .npz cache there.
garment_classifier.trained(sys.argv[1])  # Trained here (a few minutes) unless cached there.
print(f'{sys.argv[1]}: Fashion-MNIST caches and the garment classifier ready to carry.')
PY
fi

# shellcheck source=benchmarks/gpu_wheels.sh
source benchmarks/gpu_wheels.sh 'bash benchmarks/gpu_learning_run.sh prepare'
export DATA
exec "$PYTHON" -u benchmarks/gpu_learning_run.py
