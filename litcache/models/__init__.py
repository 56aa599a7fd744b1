"""Model families written in the project, for recipes to share (``litcache.zoo`` in recipes of
earlier releases: it still imports, the same names).

Every family exposes the names a recipe cuts at: ``stem``, the stages (``layer1``...) or
``blocks``, and ``head``; ``forward`` is exactly stem -> stages -> head, so the split check holds.

- CIFAR-style ResNets (He et al. 2016, section 4.2) with option-A shortcuts: when a block
  changes shape, the shortcut subsamples by 2 and zero-pads the new channels, so it has no
  parameters. Depth = 6n + 2 for n blocks per stage.
- CIFAR-style ResNeXts (Xie et al. 2017, section 5.3): bottleneck blocks with a grouped 3x3
  conv, 3 stages. Depth = 9n + 2.
- VDCNN (Conneau et al. 2017): character-level temporal convolutions for text, depth 9/17/29/49.
- The StarGAN generator (Choi et al. 2018): down-sampling convs, residual blocks, up-sampling.
- Vision Transformers (Dosovitskiy et al. 2021) for CIFAR: torchvision's ``VisionTransformer``
  itself, cut by callables (``vit_stem``, ``vit_section``, ``vit_head``) since its class token and
  position embedding are added in functional code, not by a module of their own.
"""

from .resnet import CifarResNet, cifar_resnet
from .resnext import CifarResNeXt, cifar_resnext
from .stargan import StarGANGenerator, convert_stargan_state, stargan_generator
from .vdcnn import VDCNN, VDCNN_BLOCKS, vdcnn
from .vit import ViTHead, ViTStem, block_group, cifar_vit, vit_head, vit_section, vit_stem

__all__ = [
    "CifarResNet", "cifar_resnet",
    "CifarResNeXt", "cifar_resnext",
    "VDCNN", "vdcnn", "VDCNN_BLOCKS",
    "StarGANGenerator", "stargan_generator", "convert_stargan_state",
    "cifar_vit", "ViTStem", "ViTHead", "vit_stem", "vit_section", "vit_head", "block_group",
]
