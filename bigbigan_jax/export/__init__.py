"""Export of a training run's networks to TensorFlow (SavedModel), ONNX and safetensors.

`python -m bigbigan_jax.export --workdir=runs/NAME --format=saved_model|onnx|safetensors`;
`weights.load` reads a safetensors export back into the project's parameter trees without JAX.
"""
