"""Test-wide settings: four fake CPU devices (besides any XLA_FLAGS given), quick compiles and
the persistent compilation cache; one tiny trained run shared by every test that needs a finished
run, and the initial states of the tests' configs from one compiled program each."""

import fcntl
import os
import shutil
import subprocess
import sys

DEVICE_COUNT_FLAG = '--xla_force_host_platform_device_count'
# Flags that make XLA compile the same programs faster, given unless XLA_FLAGS sets them:
# - LLVM's optimisation level 0: about a third less compile time (tests/test_train_step.py
#   alone: 262 s -> 166 s; the whole suite 17:58 -> 15:29 min), no slower to run here.
# - XLA's loop emitters for CPU fusions instead of its newer fusion emitters: the tiny config's
#   train step compiles in 12-18 s instead of 21-30 s; in fresh clones, alone, the suite's CPU
#   time fell from 1,813 to 1,335 s (16:21 -> 12:10 min, the same session), the time spent
#   compiling inside the pytest workers from 907 to 505 s.
# Rounding then differs as it does between CPUs (natively and under --xla_cpu_max_isa=AVX2 the
# second flag changes the bits of a step's results, under SSE4_2 not); the tolerances and the
# learning test's statistics were measured with these flags.
QUICK_COMPILE_FLAGS = {'--xla_backend_optimization_level': '0',
                       '--xla_cpu_use_fusion_emitters': 'false'}


def xla_flags(device_count: int) -> str:
  """XLA_FLAGS with `device_count` CPU devices and the quick-compile flags, keeping the other
  flags given, such as --xla_cpu_max_isa=AVX2 (XLA then rounds as a CPU without AVX-512 does)."""
  kept = [f for f in os.environ.get('XLA_FLAGS', '').split() if not f.startswith(DEVICE_COUNT_FLAG)]
  for flag, value in QUICK_COMPILE_FLAGS.items():
    if not any(f.startswith(flag + '=') for f in kept):
      kept.append(f'{flag}={value}')
  return ' '.join([*kept, f'{DEVICE_COUNT_FLAG}={device_count}'])


if DEVICE_COUNT_FLAG not in os.environ.get('XLA_FLAGS', ''):  # Subprocesses may set their own.
  os.environ['XLA_FLAGS'] = xla_flags(4)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

import jax  # noqa: E402  (must come after XLA_FLAGS)

_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.jax_cache')
jax.config.update('jax_compilation_cache_dir', os.environ.get('JAX_COMPILATION_CACHE_DIR', _CACHE))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
jax.config.update('jax_platforms', 'cpu')


import numpy as np  # noqa: E402
import pytest  # noqa: E402


# Runs argv[2:] in this process once the kernel is set to kill it when process argv[1] (the test
# process) ends, so that a suite killed with SIGTERM, which skips run_together's cleanup, leaves
# no workers running. In the child rather than a preexec_fn: forking a multithreaded process to
# run Python there can deadlock (and JAX warns).
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):  # It ended before the request was made.
  sys.exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def run_together(commands: list[list[str]], env: dict[str, str], timeout: float
                 ) -> list[tuple[int, str, str]]:
  """Starts every command at once; (exit code, stdout, stderr) of each, none left running, also
  when the test process itself is killed."""
  if sys.platform == 'linux':
    commands = [[sys.executable, '-c', _DIE_WITH_PARENT, str(os.getpid()), *c] for c in commands]
  procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for command in commands]
  try:
    outputs = [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      p.kill()
  return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]


def load_benchmark(name: str):
  """The script benchmarks/<name>.py as a module (benchmarks/ is not a package)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks',
                      f'{name}.py')
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def assert_trees_differ(a, b):
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def tiny_training_config(steps: int, **overrides):
  """The tiny config trained on mock ImageNet for `steps` steps, checkpointing every 2;
  `overrides` as in default_config.tiny_config."""
  from bigbigan_jax import default_config  # pylint: disable=g-import-not-at-top
  settings = dict(num_train_steps=steps, checkpoint_every_steps=2, image_every_steps=2,
                  log_every_steps=1, data__shuffle_buffer=16)
  return default_config.tiny_config(**{**settings, **overrides})


def initial_state(config, seed: int = 0):
  """init_state(config, PRNGKey(seed)) on the host, computed as training does (jitted over all
  devices), so that every test of one model shape loads one compiled program from the cache."""
  from bigbigan_jax import parallel, train_step  # pylint: disable=g-import-not-at-top
  return jax.device_get(train_step.make_initial_state(config, parallel.make_mesh())(
      jax.random.PRNGKey(seed)))


def train_on_mock_data(config, workdir):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from bigbigan_jax import train  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=64):
    return train.train_and_evaluate(config, str(workdir))


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory, worker_id):
  """(workdir, final state) of a 4-step tiny run with checkpoints at steps 2 and 4.

  Trained once per test session: the first pytest-xdist worker to ask trains it in the folder
  all workers share while the others wait, then read its final checkpoint.
  Tests must not change the workdir; copy it first (shutil.copytree) to modify it.
  """
  base = tmp_path_factory.getbasetemp()
  root = base.parent if worker_id != 'master' else base  # The workers' common folder.
  workdir = root / 'tiny_run'
  config = tiny_training_config(4)
  with open(root / 'tiny_run.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if (root / 'tiny_run.done').exists():
      from bigbigan_jax import parallel, run_dir  # pylint: disable=g-import-not-at-top
      return workdir, jax.device_get(run_dir.read_checkpoint(
          run_dir.path(str(workdir)), config.num_train_steps, config, parallel.make_mesh()))
    shutil.rmtree(workdir, ignore_errors=True)  # What a failed attempt left.
    cwd = os.getcwd()
    os.chdir(root)
    try:  # A relative --workdir, as `runs/<config name>` is.
      state = jax.device_get(train_on_mock_data(config, workdir.name))
    finally:
      os.chdir(cwd)
    (root / 'tiny_run.done').touch()
    return workdir, state


# Test files by their time in the 2-worker suite on the 2-core machine (seconds, `--durations`
# summed per file, 2026-12-05), longest first. With `--dist loadfile --no-loadscope-reorder`
# (Makefile) each file runs whole on one worker, its module fixtures built once, and the long
# files start first so that the two workers end together.
SLOWEST_FILES = ('test_multiprocess.py', 'test_learning.py', 'test_reliability.py',
                 'test_train_step.py', 'test_fast_paths.py', 'test_export.py',
                 'test_in_memory.py', 'test_evaluation_pipeline.py', 'test_benchmarks.py',
                 'test_garment_metrics.py', 'test_encoder.py', 'test_generator_discriminator.py',
                 'test_encoder_statistics.py', 'test_train_e2e.py',
                 'test_fashion_mnist_builder.py')


def pytest_collection_modifyitems(items):
  rank = lambda item: (SLOWEST_FILES.index(item.path.name) if item.path.name in SLOWEST_FILES
                       else len(SLOWEST_FILES))
  items.sort(key=rank)  # Stable: tests keep their order inside a file.
