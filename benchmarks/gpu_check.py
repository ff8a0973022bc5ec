"""The GPU check's driver (run through benchmarks/gpu_check.sh, which sets up the imports).

  bash benchmarks/gpu_check.sh          # preflight + d1 (with a profile), d2, d1_remat, d1_f32res
  bash benchmarks/gpu_check.sh more     # preflight + d1_dense_attention, d1_remat_f32res, d2_remat
  bash benchmarks/gpu_check.sh flops    # on CPU: count the model FLOPs of every run into
                                        # benchmarks/model_flops.json (those not there yet)

1. The attention preflight (benchmarks/attention_check.py): cuDNN fused attention against dense
   attention in bf16 at the config's attention shapes. The benchmarks run with fused attention
   if it passes, else with chunked attention (the log says which and why).
2. The benchmark runs (benchmarks/train_step.py), each in its own process, most important
   first, under one deadline: each gets the time left; a run that would start with less than
   MIN_RUN_S left is skipped and logged as such. The first run also records a profile.
3. MFU from the model FLOPs: XLA's count on CPU with dense attention, from
   benchmarks/model_flops.json or, for a config it lacks, counted now on CPU (as in the CPU dry
   run at the tiny config). XLA's count of the benchmarked program is kept beside it.

Files in $OUT: gpu_check.log (every process's full output), gpu_check.json (settings, the
preflight, every run with its status and numbers) and profile/ (at most 6 trace files, flat).

Settings come from the environment: OUT, CONFIG (configs/imagenet128.py), BATCH (128), STEPS
and WARMUP (timed and warm-up steps), DEADLINE (seconds from the start), MIN_RUN_S, PEAK_TFLOPS
(989, the H200's nominal dense bf16), RUNS (comma-separated run names; others are skipped),
ATTENTION (skip the preflight and use this attention). On a GPU the defaults are STEPS 20,
WARMUP 3, DEADLINE 540, MIN_RUN_S 60; where the preflight finds no GPU (the CPU dry run) they
are STEPS 3, WARMUP 1, DEADLINE 120, MIN_RUN_S 10.
"""

import datetime
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOPS_TABLE = os.path.join(ROOT, 'benchmarks', 'model_flops.json')
PEAK_NOTE = 'H200 nominal dense bf16'
MARGIN_S = 15  # Kept free at the deadline: killing a run, the summary, the copies.
PREFLIGHT_MAX_S = 180
MAX_PROFILE_FILES = 6
MAX_FILE_MIB = 15
PROFILE_SUFFIXES = ('.xplane.pb', '.trace.json.gz')

# name -> config overrides. The first run of each list also records the profile.
RUNS = {
    '': [
        ('d1', {'optim.d_steps': 1}),
        ('d2', {'optim.d_steps': 2}),
        ('d1_remat', {'optim.d_steps': 1, 'model.remat': True}),
        ('d1_f32res', {'optim.d_steps': 1, 'float32_residuals': True}),
    ],
    'more': [
        ('d1_dense_attention', {'optim.d_steps': 1, 'model.attention': 'dense'}),
        ('d1_remat_f32res', {'optim.d_steps': 1, 'model.remat': True, 'float32_residuals': True}),
        ('d2_remat', {'optim.d_steps': 2, 'model.remat': True}),
    ],
}
DEFAULTS = {  # (on a GPU, in the CPU dry run)
    'STEPS': (20, 3), 'WARMUP': (3, 1), 'DEADLINE': (540, 120), 'MIN_RUN_S': (60, 10),
}


def setting(name, dry_run=False):
  value = os.environ.get(name)
  return int(value) if value else DEFAULTS[name][dry_run]


def config_flags(config, batch, overrides) -> list[str]:
  flags = [f'--config={config}', f'--config.batch_size={batch}']
  return flags + [f'--config.{k}={v}' for k, v in overrides.items()]


def flops_key(config, batch, overrides) -> str:
  """The model_flops.json key: config, batch and the fields that change the model FLOPs."""
  fields = {'optim.d_steps': None, 'model.remat': False, 'float32_residuals': False}
  fields.update({k: v for k, v in overrides.items() if k in fields})
  return f'{os.path.normpath(config)} batch_size={batch} ' + ' '.join(
      f'{k}={v}' for k, v in fields.items())


def load_table() -> dict:
  if not os.path.exists(FLOPS_TABLE):
    return {}
  with open(FLOPS_TABLE) as f:
    return json.load(f)


class Check:
  """The log, the deadline and the subprocesses of one gpu_check call."""

  def __init__(self, out):
    self.out = out
    self.start = time.monotonic()
    self.deadline = self.start + setting('DEADLINE')
    self.log = open(os.path.join(out, 'gpu_check.log'), 'w', buffering=1)
    self.tmp = tempfile.mkdtemp(prefix='gpu_check_')

  def elapsed(self) -> float:
    return time.monotonic() - self.start

  def left(self) -> float:
    """Seconds a process may still take, the margin kept."""
    return self.deadline - time.monotonic() - MARGIN_S

  def say(self, text='', log_only=False):
    """A line on the console (unless log_only) and in the log, stamped with the elapsed time."""
    for line in str(text).splitlines() or ['']:
      self.log.write(f'[{self.elapsed():6.1f} s] {line}\n')
      if not log_only:
        print(line, flush=True)

  def run(self, name, argv, timeout, env=None):
    """Runs argv with its output into the log; returns (status, seconds, last output lines).

    status: 'ok', 'failed (exit N)' or 'timeout'. A timed-out process group is killed.
    """
    timeout = max(1, int(timeout))
    self.say(f'--- {name}: {" ".join(argv)} (timeout {timeout} s)', log_only=True)
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors='replace', env={**os.environ, **(env or {})},
                            start_new_session=True)
    lines, timed_out = [], False
    def kill(*_):
      nonlocal timed_out
      timed_out = True
      for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
          os.killpg(proc.pid, sig)
        except ProcessLookupError:
          return
        time.sleep(3)
    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
      for line in proc.stdout:
        line = line.rstrip('\n')
        self.say(f'  {line}', log_only=True)
        if not line.startswith(('I0000', 'W0000')):  # absl's start-up lines.
          lines = (lines + [line])[-40:]
      proc.wait()
    finally:
      timer.cancel()
    seconds = time.monotonic() - start
    status = 'timeout' if timed_out else 'ok' if proc.returncode == 0 else f'failed (exit {proc.returncode})'
    self.say(f'--- {name}: {status} after {seconds:.1f} s', log_only=True)
    return status, seconds, lines


def error_excerpt(lines, n=4) -> str:
  """The last few informative lines of a failed process's output."""
  keep = [l.strip() for l in lines if l.strip() and not l.lstrip().startswith('File "')]
  return ' | '.join(keep[-n:])[-600:]


def preflight(check, python, config, batch):
  explicit = os.environ.get('ATTENTION')
  if explicit:
    check.say(f'preflight skipped: ATTENTION={explicit} given')
    return {'status': 'skipped', 'reason': f'ATTENTION={explicit} given'}, explicit
  path = os.path.join(check.tmp, 'attention_check.json')
  argv = [python, '-u', 'benchmarks/attention_check.py', *config_flags(config, batch, {}),
          f'--json={path}']
  status, seconds, lines = check.run('preflight', argv, min(PREFLIGHT_MAX_S, check.left()))
  if status == 'ok' and os.path.exists(path):
    with open(path) as f:
      report = json.load(f)
    for line in lines:
      if line.startswith('  '):
        check.say(line)
  else:
    report = {'status': 'error', 'reason': f'the preflight {status}: {error_excerpt(lines)}',
              'recommended_attention': 'chunked'}
  report['wall_s'] = round(seconds, 1)
  attention = report['recommended_attention']
  if 'backend' in report:
    check.say(f'preflight ran on {report["device_kind"]} (backend {report["backend"]}, jax '
              f'{report["jax_version"]})')
  check.say(f'preflight ({seconds:.0f} s): fused attention {report["status"]}: '
            f'{report["reason"]}')
  check.say(f'=> the benchmarks run with {attention} attention' +
            ('' if attention == 'fused' else ' (the fallback: chunked query blocks)'))
  return report, attention


def count_flops(check, python, config, batch, overrides, timeout) -> dict:
  """XLA's count of the step compiled on CPU with dense attention (train_step.py's
  --compile_only): {'tflop_per_step', 'jax_version', 'seconds'}, or {'error'}."""
  path = os.path.join(check.tmp, f'flops_{len(os.listdir(check.tmp))}.json')
  argv = [python, '-u', 'benchmarks/train_step.py',
          *config_flags(config, batch, {**overrides, 'model.attention': 'dense'}),
          '--compile_only', f'--json={path}']
  env = {'JAX_PLATFORMS': 'cpu'}  # (XLA's count survives the compilation cache.)
  status, seconds, lines = check.run('model FLOPs count on CPU', argv, timeout, env)
  if status != 'ok':
    return {'error': f'the count on CPU {status}: {error_excerpt(lines)}'}
  with open(path) as f:
    result = json.loads(f.readline())
  if not result['xla_cost_analysis_tflop_per_step']:
    return {'error': 'XLA gave no cost analysis on CPU'}
  return {'tflop_per_step': result['xla_cost_analysis_tflop_per_step'],
          'jax_version': result['jax_version'], 'seconds': round(seconds, 1)}


def model_flops(check, python, config, batch, overrides, table, counted, min_run_s=0):
  """(TFLOP per step or None, where from) for these overrides: the table's, or counted now."""
  key = flops_key(config, batch, overrides)
  if key in table:
    return table[key]['tflop_per_step'], (
        f'benchmarks/model_flops.json: XLA on CPU, dense attention, jax {table[key]["jax_version"]}')
  if key not in counted:
    check.say(f'  model FLOPs of "{key}": not in benchmarks/model_flops.json, counting on CPU')
    # The count may take what the run does not need; cut short, the run goes without MFU.
    counted[key] = count_flops(check, python, config, batch, overrides,
                               check.left() - min_run_s)
  c = counted[key]
  if 'error' in c:
    return None, c['error']
  return c['tflop_per_step'], (f'counted now: XLA on CPU, dense attention, jax '
                               f'{c["jax_version"]}, {c["seconds"]:.0f} s')


def copy_profile(check, src, name) -> list[str]:
  """Copies the trace files under src flat into $OUT/profile as <name>[_i].<suffix>, the
  .xplane.pb gzipped; a file still over MAX_FILE_MIB is left out (the device tool's limit)."""
  found = sorted(os.path.join(d, f) for d, _, files in os.walk(src) for f in files
                 if f.endswith(PROFILE_SUFFIXES))
  if not found:
    check.say(f'profile: no trace files under {src}')
    return []
  dest = os.path.join(check.out, 'profile')
  os.makedirs(dest, exist_ok=True)
  copied = []
  for i, path in enumerate(found[:MAX_PROFILE_FILES]):
    suffix = next(s for s in PROFILE_SUFFIXES if path.endswith(s))
    alone = sum(f.endswith(suffix) for f in found) == 1
    target = os.path.join(dest, f'{name}{"" if alone else "_" + str(i)}{suffix}')
    if suffix.endswith('.gz'):
      shutil.copyfile(path, target)
    else:
      target += '.gz'
      with open(path, 'rb') as f, gzip.open(target, 'wb', compresslevel=6) as g:
        shutil.copyfileobj(f, g)
    mib = os.path.getsize(target) / 2**20
    if mib > MAX_FILE_MIB:
      os.remove(target)
      check.say(f'profile: {os.path.basename(target)} is {mib:.1f} MiB, over {MAX_FILE_MIB}: left out')
      continue
    copied.append(os.path.relpath(target, check.out))
    check.say(f'profile: {copied[-1]} ({mib:.2f} MiB, from {os.path.relpath(path, src)})',
              log_only=True)
  if len(found) > MAX_PROFILE_FILES:
    check.say(f'profile: {len(found)} trace files, kept the first {MAX_PROFILE_FILES}')
  return copied


def benchmark(check, python, name, overrides, s, table, counted, profile_dir):
  """One train_step.py run; returns its gpu_check.json entry."""
  entry = {'name': name, 'overrides': overrides}
  if s['runs'] and name not in s['runs']:
    entry.update(status='skipped', reason='not in RUNS')
  elif check.left() < s['min_run_s']:
    entry.update(status='skipped', reason=f'deadline: {max(check.left(), 0):.0f} s left, a run '
                 f'needs MIN_RUN_S={s["min_run_s"]}')
  if 'status' in entry:
    check.say(f'== {name}: skipped ({entry["reason"]})')
    return entry

  check.say(f'== {name}: ' + ', '.join(f'{k}={v}' for k, v in overrides.items()))
  model_overrides = {k: v for k, v in overrides.items() if k != 'model.attention'}
  tflop, source = model_flops(check, python, s['config'], s['batch'],
                              {**model_overrides, 'model.remat': False}, table, counted,
                              s['min_run_s'])
  hardware_tflop = tflop
  if overrides.get('model.remat'):
    hardware_tflop, _ = model_flops(check, python, s['config'], s['batch'], model_overrides,
                                    table, counted, s['min_run_s'])
  entry['model_tflop_per_step'], entry['model_flops_source'] = tflop, source
  if tflop is None:
    check.say(f'  no model FLOPs ({source}): this run reports no MFU')
  if check.left() < s['min_run_s']:
    entry.update(status='skipped', reason=f'deadline: {max(check.left(), 0):.0f} s left after '
                 'counting the model FLOPs')
    check.say(f'  skipped ({entry["reason"]})')
    return entry

  path = os.path.join(check.tmp, f'{name}.json')
  argv = [python, '-u', 'benchmarks/train_step.py',
          *config_flags(s['config'], s['batch'], overrides), f'--steps={s["steps"]}',
          f'--warmup={s["warmup"]}', f'--peak_tflops={s["peak_tflops"]}', f'--json={path}']
  if tflop:
    argv += [f'--model_tflop_per_step={tflop}', f'--model_flops_source={source}']
  if hardware_tflop and hardware_tflop != tflop:
    argv += [f'--hardware_tflop_per_step={hardware_tflop}']
  if profile_dir:
    argv += [f'--profile={profile_dir}', '--profile_steps=3']
  entry['timeout_s'] = int(check.left())
  status, seconds, lines = check.run(name, argv, check.left())
  entry.update(status=status, wall_s=round(seconds, 1))
  if status == 'ok' and os.path.exists(path):
    with open(path) as f:
      entry['result'] = json.loads(f.readline())
    for line in lines:
      if re.match(r'(compile|\d[\d.]* s/step|MFU|no MFU|XLA cost|peak device)', line):
        check.say(f'  {line}')
  else:
    entry['reason'] = error_excerpt(lines) if status != 'timeout' else \
        f'killed at the deadline after {seconds:.0f} s'
    check.say(f'  {status}: {entry["reason"]} (full output in gpu_check.log)')
  return entry


def summary_table(runs) -> list[str]:
  head = (f'{"run":18s} {"status":15s} {"s/step":>8s} {"images/s":>9s} {"MFU":>7s} '
          f'{"model TFLOP":>11s} {"XLA TFLOP":>9s} {"peak GiB":>8s} {"compile s":>9s}')
  rows = [head]
  for r in runs:
    x = r.get('result')
    if not x or 's_per_step' not in x:
      rows.append(f'{r["name"]:18s} {r["status"]:15s} {r.get("reason", "")}')
      continue
    fmt = lambda v, f: format(v, f) if v is not None else '-'
    rows.append(
        f'{r["name"]:18s} {"ok":15s} {x["s_per_step"]:8.4f} {x["images_per_s"]:9.1f} '
        f'{fmt(x["mfu"] and 100 * x["mfu"], ".3g") + "%":>7s} '
        f'{fmt(x["model_tflop_per_step"], "11.4g")} '
        f'{fmt(x["xla_cost_analysis_tflop_per_step"], "9.4g")} {fmt(x["peak_memory_gib"], "8.2f")} '
        f'{x["compile_s"]:9.1f}')
  return rows


def count_table(python):
  """`gpu_check.sh flops`: counts the model FLOPs of every run missing from the table."""
  config, batch = os.environ.get('CONFIG', 'configs/imagenet128.py'), int(os.environ.get('BATCH', 128))
  out = tempfile.mkdtemp(prefix='gpu_check_flops_')
  os.environ.setdefault('DEADLINE', '100000')
  check = Check(out)
  table = load_table()
  wanted = []
  for _, overrides in RUNS[''] + RUNS['more']:
    for remat in {False, bool(overrides.get('model.remat'))}:
      key = flops_key(config, batch, {**overrides, 'model.remat': remat})
      if key not in table and key not in [k for k, _ in wanted]:
        wanted.append((key, {**overrides, 'model.remat': remat}))
  for key, overrides in wanted:
    check.say(f'counting {key}')
    c = count_flops(check, python, config, batch, overrides, 3600)
    check.say(f'  {c}')
    if 'error' in c:
      continue
    table = load_table()
    table[key] = {'tflop_per_step': c['tflop_per_step'], 'jax_version': c['jax_version'],
                  'counted': datetime.date.today().isoformat()}
    with open(FLOPS_TABLE, 'w') as f:
      json.dump(table, f, indent=1, sort_keys=True)
      f.write('\n')
  check.say(f'{FLOPS_TABLE}: {len(load_table())} entries (log: {out}/gpu_check.log)')


def main():
  mode = sys.argv[1] if len(sys.argv) > 1 else ''
  python = os.environ.get('PYTHON') or sys.executable
  if mode == 'flops':
    return count_table(python)
  if mode not in RUNS:
    sys.exit(f'Unknown mode {mode!r}: use none, "more", "flops" or "fetch".')
  out = os.environ.get('OUT') or '/tmp/gpu_check'
  os.makedirs(out, exist_ok=True)
  check = Check(out)
  s = {'config': os.environ.get('CONFIG', 'configs/imagenet128.py'),
       'batch': int(os.environ.get('BATCH', 128)),
       'peak_tflops': float(os.environ.get('PEAK_TFLOPS', 989)),
       'runs': [r for r in os.environ.get('RUNS', '').split(',') if r], 'mode': mode or 'default'}
  report = {'started': datetime.datetime.now().isoformat(timespec='seconds'), 'settings': s}
  check.say(f'GPU check ({s["mode"]}): {s["config"]} at batch {s["batch"]}; full output in '
            f'{out}/gpu_check.log')
  smi = shutil.which('nvidia-smi')
  if smi:
    status, _, lines = check.run('nvidia-smi', [
        smi, '--query-gpu=name,memory.total,clocks.max.sm,driver_version', '--format=csv,noheader'], 30)
    report['nvidia_smi'] = lines
    check.say('nvidia-smi: ' + ('; '.join(lines) if status == 'ok' else status))
  else:
    check.say('nvidia-smi: not found')

  report['preflight'], attention = preflight(check, python, s['config'], s['batch'])
  dry_run = report['preflight'].get('backend') == 'cpu'
  if dry_run and not os.environ.get('DEADLINE'):
    check.deadline = check.start + DEFAULTS['DEADLINE'][1]
  s.update(dry_run=dry_run, attention=attention, steps=setting('STEPS', dry_run),
           warmup=setting('WARMUP', dry_run), min_run_s=setting('MIN_RUN_S', dry_run),
           deadline_s=round(check.deadline - check.start),
           mfu_basis=f'model FLOPs (XLA count on CPU, dense attention) per second over '
                     f'{s["peak_tflops"]:g} TFLOP/s ({PEAK_NOTE})')
  check.say(f'{"CPU dry run" if dry_run else "runs"}: {s["steps"]} timed steps after '
            f'{s["warmup"]} warm-up, deadline {s["deadline_s"]} s from the start, MFU against '
            f'{s["peak_tflops"]:g} TFLOP/s ({PEAK_NOTE})')

  table, counted = load_table(), {}
  profile_src = os.path.join(check.tmp, 'profile')
  report['runs'], report['profile_files'] = [], []
  todo, profiled = list(RUNS[mode]), False
  for i, (name, overrides) in enumerate(todo):
    overrides = {'model.attention': attention, **overrides}
    entry = benchmark(check, python, name, overrides, s, table, counted,
                      None if profiled else profile_src)
    report['runs'].append(entry)
    if entry['status'] == 'ok' and not profiled:  # The first run that ran has the profile.
      report['profile_files'], profiled = copy_profile(check, profile_src, name), True
    if entry['status'].startswith('failed') and overrides['model.attention'] == 'fused':
      # The preflight passed but the step failed with cuDNN attention: the other runs use the
      # fallback, and this one is tried again with it.
      attention = s['attention'] = 'chunked'
      check.say(f'  {name} failed with fused attention: it runs again, and the other runs '
                'run, with chunked attention')
      todo.insert(i + 1, (f'{name}_chunked', {**overrides, 'model.attention': 'chunked'}))
      if s['runs'] and name in s['runs']:
        s['runs'].append(f'{name}_chunked')
    with open(os.path.join(out, 'gpu_check.json'), 'w') as f:  # Rewritten after every run.
      json.dump(report, f, indent=1)

  report['wall_s'] = round(check.elapsed(), 1)
  with open(os.path.join(out, 'gpu_check.json'), 'w') as f:
    json.dump(report, f, indent=1)
  check.say('')
  for row in summary_table(report['runs']):
    check.say(row)
  check.say(f'MFU = {s["mfu_basis"]}; "XLA TFLOP" is XLA\'s cost analysis of the program run '
            '(on GPU cuDNN/cuBLAS calls count as -1 FLOP: no model count).')
  check.say(f'done in {check.elapsed():.0f} s; files in {out}: ' + ', '.join(
      ['gpu_check.log', 'gpu_check.json', *report['profile_files']]))
  shutil.rmtree(check.tmp, ignore_errors=True)


if __name__ == '__main__':
  main()
