"""python -m bigbigan_jax.export --workdir=runs/NAME [--step=N] --format=FORMAT [--out=DIR].

Exports one checkpoint's networks (G's EMA weights with standing BatchNorm statistics, E with
its running statistics, D with its spectral-norm vectors) as a SavedModel, ONNX files or
safetensors, by default into `<workdir>/export/<step>/<format>`; see exporter.py.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow's C++ INFO lines.

from absl import app, flags, logging  # noqa: E402

from bigbigan_jax.export import exporter  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Run directory holding config.json and checkpoints/.')
flags.DEFINE_integer('step', None, 'Checkpoint step to export; default the newest.')
flags.DEFINE_string('format', None, f'One of {", ".join(exporter.FORMATS)}.')
flags.DEFINE_string('out', None, 'Output directory; default <workdir>/export/<step>/<format>.')
flags.DEFINE_bool('overwrite', False, 'Replace a non-empty --out.')
flags.DEFINE_string('dtype', None, "Activation dtype of the exported SavedModel or ONNX "
                    "networks; default the run's config.dtype.")
flags.mark_flags_as_required(['workdir', 'format'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  logging.set_verbosity(logging.WARNING)  # Restoring logs every step at INFO.
  try:
    out = exporter.export(FLAGS.workdir, FLAGS.format, FLAGS.out, FLAGS.step, FLAGS.overwrite,
                          FLAGS.dtype)
  except (exporter.ExportError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')
  print(f'Wrote the {FLAGS.format} export of {FLAGS.workdir} to {out}.')


if __name__ == '__main__':
  app.run(main)
