"""The GPU check runs end to end as a CPU dry run at the tiny config and reports its numbers."""

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import load_benchmark, xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_dry_run(tmp_path):
  """`OUT=... CONFIG=configs/tiny.py BATCH=8 bash benchmarks/gpu_check.sh`, one run (RUNS=d1)."""
  out = tmp_path / 'out'
  env = {**os.environ, 'OUT': str(out), 'CONFIG': 'configs/tiny.py', 'BATCH': '8',
         'PYTHON': sys.executable, 'RUNS': 'd1', 'STEPS': '2', 'WARMUP': '1', 'DEADLINE': '600',
         'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': xla_flags(1),  # Keeps an --xla_cpu_max_isa given.
         'JAX_COMPILATION_CACHE_DIR': os.environ.get('GPU_CHECK_TEST_CACHE', os.path.join(ROOT, '.jax_cache'))}
  console = subprocess.run(['bash', os.path.join(ROOT, 'benchmarks', 'gpu_check.sh')],
                           capture_output=True, text=True, env=env, timeout=600)
  assert console.returncode == 0, console.stdout + console.stderr

  # What the device tool brings back: at most 8 files, none deeper than one folder, plain names.
  files = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)
  assert len(files) <= 8 and all(f.count(os.sep) <= 1 for f in files), files
  assert all(re.fullmatch(r'[A-Za-z0-9._-]+', part) for f in files for part in f.split(os.sep))
  assert {'gpu_check.log', 'gpu_check.json'} <= set(files)
  assert any(f.startswith('profile' + os.sep) and f.endswith('.xplane.pb.gz') for f in files)

  report = json.loads((out / 'gpu_check.json').read_text())
  # No cuDNN on CPU: the preflight says so and the runs fall back to chunked attention.
  preflight = report['preflight']
  assert preflight['backend'] == 'cpu' and preflight['status'] == 'unavailable'
  assert report['settings']['attention'] == 'chunked' and report['settings']['dry_run']
  assert [s['name'][:11] for s in preflight['shapes']] == ['G attention', 'D attention']
  for shape in preflight['shapes']:
    assert shape['fused']['status'] == 'unavailable'
    assert max(shape['dense']['relative_error'].values()) < 0.1  # bf16 against float32.
    assert shape['chunked']['forward_backward_ms'] > 0

  run, *others = report['runs']
  assert run['name'] == 'd1' and run['status'] == 'ok', run
  result = run['result']
  assert result['attention'] == 'chunked' and result['images_per_s'] > 0
  # MFU from the model FLOPs counted on CPU with dense attention, XLA's own count beside it
  # (the same here: the tiny model's attention fits in one chunk).
  assert result['model_flops_source'].startswith('counted now: XLA on CPU, dense attention')
  model = result['model_tflop_per_step']
  assert result['mfu'] == pytest.approx(model / result['s_per_step'] / 989.0)
  assert result['xla_cost_analysis_tflop_per_step'] == pytest.approx(model, rel=1e-6)
  assert report['profile_files'] and result['profiled_steps'] == 3
  assert [(r['name'], r['status'], r['reason']) for r in others] == [
      (name, 'skipped', 'not in RUNS') for name in ('d2', 'd1_remat', 'd1_f32res')]

  log = (out / 'gpu_check.log').read_text()
  assert 'memory analysis per device' in log  # The runs' full output.
  assert 'd2: skipped (not in RUNS)' in log and 'd2: skipped (not in RUNS)' in console.stdout
  assert 'MFU' in console.stdout and 'fused attention unavailable' in console.stdout


def test_runs_past_the_deadline_are_skipped(tmp_path, monkeypatch):
  gpu_check = load_benchmark('gpu_check')
  monkeypatch.setenv('DEADLINE', '20')
  check = gpu_check.Check(str(tmp_path))
  settings = {'runs': [], 'min_run_s': 10, 'config': 'configs/tiny.py', 'batch': 8}
  entry = gpu_check.benchmark(check, sys.executable, 'd2', {'optim.d_steps': 2}, settings, {},
                              {}, None)
  assert entry['status'] == 'skipped' and entry['reason'].startswith('deadline: ')
  check.log.close()
  assert 'd2: skipped (deadline: ' in (tmp_path / 'gpu_check.log').read_text()


def test_model_flops_table_keys():
  """Every run of the GPU check finds its model FLOPs (and remat's) in the committed table."""
  gpu_check = load_benchmark('gpu_check')
  table = gpu_check.load_table()
  for _, overrides in gpu_check.RUNS[''] + gpu_check.RUNS['more']:
    for remat in (False, overrides.get('model.remat', False)):
      key = gpu_check.flops_key('configs/imagenet128.py', 128, {**overrides, 'model.remat': remat})
      assert table[key]['tflop_per_step'] > 40, key


def test_the_gpu_learning_run_scores_the_ends_first_then_midpoints():
  """What an early deadline leaves of the curve: its ends, then ever finer midpoints."""
  scoring_order = load_benchmark('gpu_learning_run').scoring_order
  steps = list(range(2000, 22000, 2000))
  order = scoring_order(steps)
  assert sorted(order) == steps  # Each checkpoint once.
  assert order[:5] == [20000, 2000, 10000, 6000, 14000]
  assert scoring_order([]) == [] and scoring_order([7]) == [7] and scoring_order([3, 7]) == [7, 3]
