"""Packaging for bigbigan_jax."""

import setuptools

EXPORT_REQUIRES = ['jax2onnx==0.12.5', 'onnx>=1.20.1', 'onnxruntime>=1.24.1', 'safetensors>=0.4']

setuptools.setup(
    name='bigbigan_jax',
    version='0.1.0',
    description='BigBiGAN (Donahue & Simonyan, 2019) in JAX/Flax: BigGAN G + encoder + joint D.',
    packages=setuptools.find_packages(include=['bigbigan_jax', 'bigbigan_jax.*']),
    python_requires='>=3.11',
    install_requires=[
        'jax>=0.10.2',
        'flax>=0.12.8',
        'optax>=0.2.8',
        'orbax-checkpoint>=0.12.4',
        'chex',
        'numpy',
        'scipy',
        'ml-collections>=1.0',
        'clu>=0.0.12',
        'absl-py',
        'etils[epath]',
        'pillow',
        'tensorflow-cpu>=2.21',
        'tensorboard>=2.21',
        'tensorflow-datasets>=4.9.9',
        'importlib_resources',  # TFDS imports it when preparing data but does not list it.
    ],
    extras_require={
        # python -m bigbigan_jax.export --format=onnx|safetensors. jax2onnx 0.13 and later pin
        # orbax-checkpoint<0.11.37, below what this package needs.
        'export': EXPORT_REQUIRES,
        'test': ['pytest>=8', 'pytest-xdist>=3.8', *EXPORT_REQUIRES],
        # NVIDIA GPUs through JAX's pip CUDA wheels: CUDA 12 (driver >= 525), or CUDA 13
        # (driver >= 580) with the cuda13 extra.
        'cuda': ['jax[cuda12]>=0.10.2'],
        'cuda13': ['jax[cuda13]>=0.10.2'],
        'tpu': ['jax[tpu]>=0.10.2'],  # Cloud TPU VMs: libtpu.
    },
)
