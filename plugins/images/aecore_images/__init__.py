"""Image files as aecore data sources: ``--data folder:PATH`` and ``--data mvtec:PATH``.

``folder`` reads PNG, JPEG, BMP, TIFF and WebP files under a folder, with a
class per subfolder (torchvision's ImageFolder convention) or no labels, and
``train/``/``test/`` subfolders or a seeded split. ``mvtec`` reads one
category of the MVTec-AD layout, with the defect masks of its test images
as the ``mask`` extra. Both decode with Pillow on all cores, straight into
uint8 (N, C, H, W) tensors (into the core's memory-mapped cache file when
it offers one), the same pixels on every machine::

    folder:photos?size=64&resize=crop
    folder:digits?channels=1&test_fraction=0.1&seed=3
    mvtec:mvtec_ad/bottle?size=128

A file that cannot be decoded stops loading with one line naming it;
``skip_bad=true`` leaves such files out, says how many in one warning and
lists them in the dataset's spec (``skipped``). Nothing is unpickled, and
only Pillow's PNG, JPEG, BMP, TIFF and WebP decoders ever see a file.
"""

from aecore_images.decode import SkippedImagesWarning
from aecore_images.folder import FolderConfig, ImageFolder
from aecore_images.mvtec import MVTec, MVTecConfig, UnmaskedDefectsWarning
from aecore_images.options import ImageOptions

__all__ = [
    "FolderConfig",
    "ImageFolder",
    "ImageOptions",
    "MVTec",
    "MVTecConfig",
    "SkippedImagesWarning",
    "UnmaskedDefectsWarning",
]
