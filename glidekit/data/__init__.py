"""Training data: image folders, tar shards, transforms, inpainting masks and the shapes world.

Layer: below ``glidekit.pipelines`` and ``glidekit.train``, beside ``glidekit.clip`` and
``glidekit.diffusion``; imports only ``glidekit.tokenizer`` and the utilities. ``glidekit.nn``,
``glidekit.tokenizer`` and ``glidekit.checkpoints`` never import it.
"""

from .folder import ImageFolderDataset
from .masks import (
    add_inpaint,
    make_inpaint_example,
    random_box_mask,
    random_brush_mask,
    random_mask,
)
from .shapes import ShapesDataset, ShapesIterableDataset, ShapesTokenizer
from .shards import TarShardDataset, expand_brace_pattern
from .transforms import add_low_res, image_to_tensor, load_image, make_low_res, to_pil, to_tensor

__all__ = [
    "ImageFolderDataset",
    "TarShardDataset",
    "expand_brace_pattern",
    "ShapesDataset",
    "ShapesIterableDataset",
    "ShapesTokenizer",
    "load_image",
    "image_to_tensor",
    "to_tensor",
    "to_pil",
    "make_low_res",
    "add_low_res",
    "random_mask",
    "random_box_mask",
    "random_brush_mask",
    "make_inpaint_example",
    "add_inpaint",
]
