"""TFDS builder for Fashion-MNIST read from local IDX files (idx_files); never downloads."""

import tensorflow_datasets as tfds

from bigbigan_jax.datasets import idx_files

CLASS_NAMES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
               'Shirt', 'Sneaker', 'Bag', 'Ankle boot')


class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST (70,000 28x28 grayscale images, 10 classes) from local files."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(28, 28, 1)),
            'label': tfds.features.ClassLabel(names=CLASS_NAMES),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://github.com/zalandoresearch/fashion-mnist',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    idx_files.check_files(idx_files.source_dir())
    return {split: self._generate_examples(split) for split in idx_files.SPLIT_FILES}

  def _generate_examples(self, split: str):
    images, labels = idx_files.read_split(split)
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {'image': image, 'label': int(label)}
