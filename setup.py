"""Packaging for bigbigan_jax."""

import setuptools

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
        'test': ['pytest>=8'],
        # NVIDIA GPUs through JAX's pip CUDA wheels: CUDA 12 (driver >= 525), or CUDA 13
        # (driver >= 580) with the cuda13 extra.
        'cuda': ['jax[cuda12]>=0.10.2'],
        'cuda13': ['jax[cuda13]>=0.10.2'],
        'tpu': ['jax[tpu]>=0.10.2'],  # Cloud TPU VMs: libtpu.
    },
)
