"""launch/: the exact gcloud and srun commands (stubs on PATH record them), argument quoting
through every shell on the way to main.py, required variables, and shellcheck."""

import json
import os
import pathlib
import re
import runpy
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest
import setuptools

LAUNCH = pathlib.Path(__file__).resolve().parent.parent / 'launch'
TPU_VM = LAUNCH / 'tpu_vm.sh'
SLURM = LAUNCH / 'slurm_gpu.sbatch'
AWKWARD = ['--config.model.g_attn_res=(64,)', '--config.name=two words', "--x=it's $HOME"]
SETTINGS = {'TPU_NAME': 'bb', 'ZONE': 'us-east5-b', 'ACCELERATOR': 'v6e-16',
            'WORKDIR': 'gs://bucket/run 1', 'TFDS_DATA_DIR': 'gs://bucket/tfds'}
SSH = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'bb', '--zone=us-east5-b']
WORKER = 'bash ~/bigbigan_jax/launch/tpu_worker.sh'
TRAIN_FLAGS = ['--config=configs/imagenet128.py', '--workdir=gs://bucket/run 1',
               '--config.data.data_dir=gs://bucket/tfds'] + AWKWARD


def _stub(directory: pathlib.Path, name: str, exit_code: int = 0, stdout: str = '') -> None:
  """An executable `name` that appends its argv as a JSON line to <directory>/<name>.log."""
  path = directory / name
  path.write_text(
      f'#!{sys.executable}\nimport json, sys\n'
      f'open({str(directory / (name + ".log"))!r}, "a").write(json.dumps(sys.argv[1:]) + "\\n")\n'
      f'print({stdout!r}, end="")\nsys.exit({exit_code})\n')
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _calls(directory: pathlib.Path, name: str) -> list[list[str]]:
  log = directory / (name + '.log')
  return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def stubs(tmp_path):
  directory = tmp_path / 'bin'
  directory.mkdir()
  _stub(directory, 'gcloud', stdout='ACTIVE\n')
  return directory


def _launch(stubs, *args, **settings):
  env = {**os.environ, **SETTINGS, 'TMPDIR': str(stubs.parent),
         'PATH': f'{stubs}{os.pathsep}{os.environ["PATH"]}'}
  env.update(settings)
  env = {name: value for name, value in env.items() if value is not None}
  return subprocess.run(['bash', str(TPU_VM), *args], env=env, capture_output=True, text=True,
                        timeout=60, check=False)


def _expected(command, archive):
  """The argv of every command `launch/tpu_vm.sh <command>` runs (QUEUED/SPOT: see below)."""
  if command == 'watch':  # The poll, then what a preemption triggers.
    return [['gcloud', 'compute', 'tpus', 'tpu-vm', 'describe', 'bb', '--zone=us-east5-b',
             '--format=value(state)']] + sum(
                 (_expected(c, archive) for c in ('delete', 'create', 'setup', 'train')), [])
  top = str(LAUNCH.parent)
  return {
      'create': [['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'bb', '--zone=us-east5-b',
                  '--accelerator-type=v6e-16', '--version=v2-alpha-tpuv6e']],
      'setup': [
          ['git', '-C', top, 'archive', '--format=tar.gz', f'--output={archive}', 'HEAD'],
          ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', archive, 'bb:bigbigan_jax.tar.gz',
           '--zone=us-east5-b', '--worker=all'],
          SSH + ['--worker=all', '--command=rm -rf ~/bigbigan_jax && mkdir -p ~/bigbigan_jax && '
                 'tar -xzf ~/bigbigan_jax.tar.gz -C ~/bigbigan_jax && rm ~/bigbigan_jax.tar.gz && '
                 f'{WORKER} install 3.12'],
          ['rm', '-f', archive]],
      'train': [SSH + ['--worker=all', f'--command={WORKER} start ' + ' '.join(
          shlex.quote(flag) for flag in TRAIN_FLAGS)]],
      'stop': [SSH + ['--worker=all', f'--command={WORKER} stop']],
      'status': [['gcloud', 'compute', 'tpus', 'tpu-vm', 'describe', 'bb', '--zone=us-east5-b',
                  '--format=value(state,acceleratorType,runtimeVersion)'],
                 SSH + ['--worker=all', f'--command={WORKER} status']],
      'logs': [SSH + ['--worker=0', '--command=tail -n 200 -F ~/bigbigan_run/train.log']],
      'delete': [['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'bb', '--zone=us-east5-b',
                  '--quiet']],
  }[command]


def _same_remote_words(printed, expected):
  """Equal argv, except that a --command= string is compared by the words its shell sees."""
  def words(argv):
    return [shlex.split(arg) if arg.startswith('--command=') else arg for arg in argv]
  return [words(argv) for argv in printed] == [words(argv) for argv in expected]


@pytest.mark.parametrize('command', ['create', 'setup', 'train', 'stop', 'status', 'logs',
                                     'delete', 'watch'])
def test_dry_run_prints_every_command_and_runs_none(stubs, command):
  result = _launch(stubs, '--dry-run', command, *AWKWARD)
  assert result.returncode == 0, result.stderr
  printed = [shlex.split(line) for line in result.stdout.splitlines()]
  archive = str(stubs.parent / 'bigbigan_jax-bb.tar.gz')
  assert _same_remote_words(printed, _expected(command, archive))
  assert _calls(stubs, 'gcloud') == []
  assert not (stubs.parent / 'bigbigan_jax-bb.tar.gz').exists()


def test_train_command_is_quoted_exactly(stubs):
  result = _launch(stubs, '--dry-run', 'train', *AWKWARD, DRY_RUN='0')
  [ssh] = [shlex.split(line) for line in result.stdout.splitlines()]
  remote = ssh[-1].removeprefix('--command=')
  assert shlex.split(remote) == ['bash', '~/bigbigan_jax/launch/tpu_worker.sh', 'start',
                                 *TRAIN_FLAGS]
  # printf %q's own spelling, which the worker's bash reads back into the same words.
  assert r'--config.model.g_attn_res=\(64\,\)' in remote
  assert r'--config.name=two\ words' in remote


@pytest.mark.parametrize('command', ['create', 'setup', 'stop', 'status', 'logs', 'delete'])
def test_running_executes_what_dry_run_prints(stubs, command):
  printed = [shlex.split(line)
             for line in _launch(stubs, command, DRY_RUN='1').stdout.splitlines()]
  result = _launch(stubs, command)
  assert result.returncode == 0, result.stderr
  assert [['gcloud'] + argv for argv in _calls(stubs, 'gcloud')] == [
      argv for argv in printed if argv[0] == 'gcloud']
  assert not (stubs.parent / 'bigbigan_jax-bb.tar.gz').exists()


def test_setup_replaces_the_code_on_a_second_run(stubs, tmp_path):
  """The remote part of `setup`, run twice by bash in a fake home: tracked files only, at the
  same place, nothing left of the first copy, and the install step reached each time."""
  home = tmp_path / 'home'
  (home / '.local' / 'bin').mkdir(parents=True)
  _stub(home / '.local' / 'bin', 'uv')
  _stub(stubs, 'python3')
  [_, _, ssh, _] = [shlex.split(line) for line in
                    _launch(stubs, '--dry-run', 'setup').stdout.splitlines()]
  env = {**os.environ, 'HOME': str(home), 'PATH': f'{stubs}{os.pathsep}{os.environ["PATH"]}'}
  for attempt in range(2):
    subprocess.run(['git', '-C', str(LAUNCH.parent), 'archive', '--format=tar.gz',
                    f'--output={home / "bigbigan_jax.tar.gz"}', 'HEAD'], check=True, timeout=60)
    if attempt:
      (home / 'bigbigan_jax' / 'stale.txt').write_text('from the first copy')
    subprocess.run(['bash', '-c', ssh[-1].removeprefix('--command=')], env=env, check=True,
                   capture_output=True, timeout=60)
    assert (home / 'bigbigan_jax' / 'setup.py').is_file()
    assert (home / 'bigbigan_jax' / 'launch' / 'tpu_worker.sh').is_file()
    assert not (home / 'bigbigan_jax' / 'bigbigan_jax' / 'setup.py').exists()
    assert not (home / 'bigbigan_jax' / 'stale.txt').exists()
    assert not (home / 'bigbigan_jax' / '.venv').exists()
    assert not (home / 'bigbigan_jax.tar.gz').exists()
  assert _calls(home / '.local' / 'bin', 'uv')[-1] == [
      'pip', 'install', '--quiet', '--python', f'{home}/bigbigan_venv/bin/python', '-c',
      f'{home}/bigbigan_jax/launch/constraints.txt', '-e', f'{home}/bigbigan_jax[tpu]']


def test_queued_spot_create_waits_until_active_and_delete_takes_the_queue(stubs):
  assert _launch(stubs, 'create', QUEUED='1', SPOT='1').returncode == 0
  assert _launch(stubs, 'delete', QUEUED='1').returncode == 0
  assert _calls(stubs, 'gcloud') == [
      ['compute', 'tpus', 'queued-resources', 'create', 'bb', '--zone=us-east5-b',
       '--node-id=bb', '--accelerator-type=v6e-16', '--runtime-version=v2-alpha-tpuv6e',
       '--spot'],
      ['compute', 'tpus', 'queued-resources', 'describe', 'bb', '--zone=us-east5-b',
       '--format=value(state.state)'],
      ['compute', 'tpus', 'queued-resources', 'delete', 'bb', '--zone=us-east5-b', '--force',
       '--quiet']]


@pytest.mark.parametrize('accelerator, runtime', [('v4-64', 'tpu-ubuntu2204-base'),
                                                  ('v5litepod-16', 'v2-alpha-tpuv5-lite'),
                                                  ('v5p-64', 'v2-alpha-tpuv5'),
                                                  ('v6e-256', 'v2-alpha-tpuv6e')])
def test_runtime_follows_the_tpu_generation(stubs, accelerator, runtime):
  result = _launch(stubs, '--dry-run', 'create', ACCELERATOR=accelerator)
  assert result.stdout.split()[-1] == f'--version={runtime}'


def _watch_until_three_describes(stubs) -> str:
  """Runs `tpu_vm.sh watch` against the stub gcloud until it has polled 3 times (60 s at most),
  stops it, and returns its stderr."""
  env = {**os.environ, **SETTINGS, 'TMPDIR': str(stubs.parent), 'WATCH_INTERVAL': '0.1',
         'PATH': f'{stubs}{os.pathsep}{os.environ["PATH"]}'}
  watcher = subprocess.Popen(['bash', str(TPU_VM), 'watch', *AWKWARD], env=env,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
  try:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(
        'describe' in argv for argv in _calls(stubs, 'gcloud')) < 3:
      time.sleep(0.1)
  finally:
    os.killpg(watcher.pid, signal.SIGTERM)
  return watcher.communicate(timeout=30)[1]


def test_watch_recreates_a_preempted_slice_and_trains_again(stubs):
  """The slice reads PREEMPTED once, then READY: one round of delete, create, setup, train."""
  count = stubs / 'describes'
  (stubs / 'gcloud').write_text(
      f'#!{sys.executable}\nimport json, pathlib, sys\n'
      f'open({str(stubs / "gcloud.log")!r}, "a").write(json.dumps(sys.argv[1:]) + "\\n")\n'
      'if "describe" in sys.argv:\n'
      f'  count = pathlib.Path({str(count)!r})\n'
      '  print("READY" if count.exists() else "PREEMPTED")\n'
      '  count.touch()\n')
  stderr = _watch_until_three_describes(stubs)
  calls = [argv[3] for argv in _calls(stubs, 'gcloud')]
  assert calls[:6] == ['describe', 'delete', 'create', 'scp', 'ssh', 'ssh'], stderr
  assert set(calls[6:]) == {'describe'}
  assert 'bb is PREEMPTED: recreating it' in stderr and 'bb: training again' in stderr
  [train] = [argv for argv in _calls(stubs, 'gcloud') if 'start' in argv[-1]]
  assert shlex.split(train[-1].removeprefix('--command='))[3:] == TRAIN_FLAGS


def test_watch_keeps_trying_until_train_has_started(stubs):
  """describe says NOT_FOUND, create fails once and setup's copy (scp) once: each is retried
  (a failed create after a delete) until train has started; then only polls."""
  (stubs / 'gcloud').write_text(
      f'#!{sys.executable}\nimport json, pathlib, sys\n'
      f'open({str(stubs / "gcloud.log")!r}, "a").write(json.dumps(sys.argv[1:]) + "\\n")\n'
      f'done = pathlib.Path({str(stubs)!r}) / ("done_" + sys.argv[4])\n'
      'first = not done.exists()\n'
      'done.touch()\n'
      'if sys.argv[4] == "describe":\n'
      '  if first:\n'
      '    sys.exit("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: bb")\n'
      '  print("READY")\n'
      'if sys.argv[4] in ("create", "scp") and first:\n'
      '  sys.exit("ERROR: failed")\n')
  stderr = _watch_until_three_describes(stubs)
  calls = [argv[3] for argv in _calls(stubs, 'gcloud')]
  assert calls[:10] == ['describe', 'delete', 'create', 'delete', 'create', 'scp', 'scp', 'ssh',
                        'ssh', 'describe'], stderr
  assert set(calls[10:]) == {'describe'}
  assert 'bb is NOT_FOUND: recreating it' in stderr and 'bb: create failed; retrying' in stderr
  assert 'bb: setup failed; retrying' in stderr and stderr.count('bb: training again') == 1


def test_autocheckpoint_creates_with_gcloud_alpha(stubs):
  result = _launch(stubs, '--dry-run', 'create', AUTOCHECKPOINT='1')
  assert shlex.split(result.stdout) == [
      'gcloud', 'alpha', 'compute', 'tpus', 'tpu-vm', 'create', 'bb', '--zone=us-east5-b',
      '--accelerator-type=v6e-16', '--version=v2-alpha-tpuv6e', '--autocheckpoint-enabled']
  result = _launch(stubs, '--dry-run', 'create', AUTOCHECKPOINT='1', QUEUED='1')
  assert result.returncode == 2 and 'AUTOCHECKPOINT=1 needs a plain slice' in result.stderr


@pytest.mark.parametrize('command, needed', [
    ('create', {'TPU_NAME', 'ZONE', 'ACCELERATOR'}),
    ('setup', {'TPU_NAME', 'ZONE'}),
    ('train', {'TPU_NAME', 'ZONE', 'WORKDIR', 'TFDS_DATA_DIR'}),
    ('stop', {'TPU_NAME', 'ZONE'}),
    ('status', {'TPU_NAME', 'ZONE'}),
    ('logs', {'TPU_NAME', 'ZONE'}),
    ('delete', {'TPU_NAME', 'ZONE'}),
    ('watch', set(SETTINGS)),
])
def test_each_command_asks_only_for_what_it_needs(stubs, command, needed):
  for name in SETTINGS:
    result = _launch(stubs, '--dry-run', command, **{name: None})
    if name in needed:
      assert result.returncode == 2
      assert result.stderr.startswith(f'error: launch/tpu_vm.sh {command} needs {name}, e.g.')
      assert result.stdout == ''
    else:
      assert result.returncode == 0, (name, result.stderr)


def test_no_command_prints_usage_without_asking_for_settings(stubs):
  result = _launch(stubs, **{name: None for name in SETTINGS})
  assert result.returncode == 2
  assert 'launch/tpu_vm.sh [--dry-run] train [flags]' in result.stdout
  assert result.stderr == ''


def test_worker_service_runs_main_with_the_exact_flags(stubs, tmp_path):
  """The remote command of `train`, run by bash as the worker's ssh would, starts the service
  whose script hands main.py exactly the flags given to tpu_vm.sh."""
  home = tmp_path / 'home'
  (home / 'bigbigan_jax' / 'launch').mkdir(parents=True)
  shutil.copy(LAUNCH / 'tpu_worker.sh', home / 'bigbigan_jax' / 'launch')
  (home / 'bigbigan_venv' / 'bin').mkdir(parents=True)
  _stub(home / 'bigbigan_venv' / 'bin', 'python')
  for tool in ('sudo', 'systemctl'):
    _stub(stubs, tool)
  [ssh] = [shlex.split(line) for line in
           _launch(stubs, '--dry-run', 'train', *AWKWARD).stdout.splitlines()]
  env = {**os.environ, 'HOME': str(home), 'USER': 'trainer',
         'PATH': f'{stubs}{os.pathsep}{os.environ["PATH"]}'}
  subprocess.run(['bash', '-c', ssh[-1].removeprefix('--command=')], env=env, check=True,
                 capture_output=True, timeout=60)
  assert [argv[:2] for argv in _calls(stubs, 'sudo')] == [
      ['tee', '/etc/systemd/system/bigbigan-train.service'], ['systemctl', 'daemon-reload'],
      ['systemctl', 'reset-failed'], ['systemctl', 'enable'], ['systemctl', 'restart']]
  subprocess.run(['bash', str(home / 'bigbigan_run' / 'train.sh')], env=env, check=True,
                 timeout=60)
  assert _calls(home / 'bigbigan_venv' / 'bin', 'python') == [
      ['-m', 'bigbigan_jax.main', *TRAIN_FLAGS]]


@pytest.mark.parametrize('code, decision', [(0, 'stop'), (130, 'stop'), (75, 'restart'),
                                            (1, 'restart'), (137, 'restart')])
def test_worker_service_restarts_on_every_exit_but_finished_and_user_stop(code, decision):
  """Exit codes from training_command: 0 finished, 130 user stop, 75 saved after SIGTERM."""
  worker = ['bash', str(LAUNCH / 'tpu_worker.sh')]
  result = subprocess.run([*worker, 'restarts', str(code)], capture_output=True, text=True,
                          timeout=30, check=True)
  assert result.stdout == f'{decision}\n'
  unit = subprocess.run([*worker, 'unit'], capture_output=True, text=True, timeout=30,
                        check=True, env={**os.environ, 'USER': 'trainer'}).stdout.splitlines()
  assert 'Restart=always' in unit and 'RestartPreventExitStatus=0 130' in unit
  assert 'Environment=JAX_INITIALIZATION_TIMEOUT=1800' in unit


def _srun(tmp_path, exit_code, *args, **settings):
  stubs = tmp_path / 'bin'
  stubs.mkdir(exist_ok=True)
  _stub(stubs, 'srun', exit_code=exit_code)
  env = {name: value for name, value in os.environ.items() if not name.startswith('SLURM_')}
  env = {**env, 'WORKDIR': '/shared/runs/a b', 'SLURM_JOB_ID': '4242',
         'RESTART_DELAY': '0', 'PATH': f'{stubs}{os.pathsep}{os.environ["PATH"]}', **settings}
  env = {name: value for name, value in env.items() if value is not None}
  result = subprocess.run(['bash', str(SLURM), *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
  return result, _calls(stubs, 'srun')


def test_slurm_script_runs_one_srun_with_the_exact_flags(tmp_path):
  result, calls = _srun(tmp_path, 0, *AWKWARD, PYTHON='/venv/bin/python',
                        TFDS_DATA_DIR='/shared/tfds', SLURM_CPUS_PER_TASK='6')
  assert result.returncode == 0, result.stderr
  assert calls == [['--kill-on-bad-exit=1', '--gpu-bind=none', '--cpus-per-task=6',
                    '/venv/bin/python', '-m', 'bigbigan_jax.main',
                    '--config=configs/imagenet128.py', '--workdir=/shared/runs/a b',
                    '--config.data.data_dir=/shared/tfds', *AWKWARD]]


def test_slurm_script_restarts_a_failing_step_on_a_new_port_then_gives_up(tmp_path):
  ports = tmp_path / 'ports'
  (tmp_path / 'bin').mkdir()
  srun = tmp_path / 'bin' / 'srun'
  srun.write_text(f'#!/usr/bin/env bash\necho "$JAX_COORDINATOR_PORT" >> {ports}\nexit 3\n')
  srun.chmod(0o755)
  result = subprocess.run(['bash', str(SLURM)], capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, 'WORKDIR': '/shared/run',
                                            'SLURM_JOB_ID': '4095', 'MAX_RESTARTS': '2',
                                            'RESTART_DELAY': '0',
                                            'PATH': f'{srun.parent}:{os.environ["PATH"]}'})
  assert result.returncode == 3
  assert 'training failed (exit 3) after 2 restarts' in result.stderr
  # Three attempts, each on its own port of the ephemeral range [61440, 65535].
  assert ports.read_text().split() == ['65535', '61440', '61441']


@pytest.mark.parametrize('code', [75, 130])
def test_slurm_script_requeues_after_a_preemption_save_and_ends_on_a_user_stop(tmp_path, code):
  (tmp_path / 'bin').mkdir()
  _stub(tmp_path / 'bin', 'scontrol')
  result, calls = _srun(tmp_path, code)
  assert result.returncode == code and len(calls) == 1
  assert _calls(tmp_path / 'bin', 'scontrol') == ([['requeue', '4242']] if code == 75 else [])


def test_slurm_script_needs_a_workdir(tmp_path):
  result, calls = _srun(tmp_path, 0, WORKDIR=None)
  assert result.returncode != 0 and 'set WORKDIR' in result.stderr
  assert calls == []


def test_constraints_pin_every_package_setup_requires(monkeypatch):
  """launch/constraints.txt, which the launchers install from, pins every requirement of
  setup.py (extras included) at one version."""
  setup_args = {}
  monkeypatch.setattr(setuptools, 'setup', setup_args.update)
  runpy.run_path(str(LAUNCH.parent / 'setup.py'))
  requirements = setup_args['install_requires'] + sum(setup_args['extras_require'].values(), [])
  normal = lambda name: re.sub(r'[-_.]+', '-', name).lower()
  required = {normal(re.match(r'[A-Za-z0-9_.-]+', r).group()) for r in requirements}
  lines = [line.split('==') for line in (LAUNCH / 'constraints.txt').read_text().splitlines()
           if line.strip() and not line.startswith('#')]
  pins = {normal(name): version for name, version in lines}
  assert required <= set(pins), sorted(required - set(pins))
  assert pins['jaxlib'] == pins['jax']


def test_scripts_parse_and_pass_shellcheck():
  scripts = [str(TPU_VM), str(LAUNCH / 'tpu_worker.sh'), str(SLURM)]
  for script in scripts:
    subprocess.run(['bash', '-n', script], check=True, timeout=30)
  if shutil.which('shellcheck') is None:
    if os.environ.get('CI'):
      pytest.fail('shellcheck is missing; .ci/run installs it (apt-get install shellcheck).')
    pytest.skip('shellcheck is not installed (apt-get install shellcheck); CI runs it.')
  result = subprocess.run(['shellcheck', *scripts], capture_output=True, text=True, timeout=60,
                          check=False)
  assert result.returncode == 0, result.stdout
