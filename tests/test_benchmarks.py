"""The train-step benchmark runs end to end at the tiny config and reports its numbers."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_step_benchmark_runs(tmp_path):
  results = tmp_path / 'results.jsonl'
  env = {**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''}
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'benchmarks', 'train_step.py'),
       f'--config={os.path.join(ROOT, "configs", "tiny.py")}', '--config.optim.d_steps=2',
       '--steps=2', '--warmup=1', f'--profile={tmp_path / "trace"}', f'--json={results}'],
      capture_output=True, text=True, env=env, timeout=900, check=True).stdout
  assert 'images/s' in out and 'TFLOP/step' in out
  result = json.loads(results.read_text())
  assert result['d_steps'] == 2 and result['batch_size'] == 8
  assert result['images_per_s'] > 0 and result['s_per_step'] > 0
  assert result['gflop_per_image'] > 0 and result['memory_analysis_gib_per_device']['temp_gib'] > 0
  assert any(files for _, _, files in os.walk(tmp_path / 'trace'))
