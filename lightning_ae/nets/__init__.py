"""Plain ``nn.Module`` networks: usable without Lightning."""

from lightning_ae.nets.conv import ConvDecoder, ConvEncoder, ResidualBlock, ResidualStack
from lightning_ae.nets.defaults import LDM_DEFAULTS, NETWORKS, Network, check_network, default_networks
from lightning_ae.nets.ldm import LDMDecoder, LDMEncoder
from lightning_ae.nets.mlp import MLPDecoder, MLPEncoder, mlp
from lightning_ae.nets.patchgan import PatchGANDiscriminator
from lightning_ae.nets.pixelcnn import GatedMaskedConv2d, GatedPixelCNN
from lightning_ae.nets.sigmoid import SigmoidEncoder
from lightning_ae.nets.transformer import PriorTransformer

__all__ = [
    "LDM_DEFAULTS",
    "NETWORKS",
    "ConvDecoder",
    "ConvEncoder",
    "GatedMaskedConv2d",
    "GatedPixelCNN",
    "LDMDecoder",
    "LDMEncoder",
    "MLPDecoder",
    "MLPEncoder",
    "Network",
    "PatchGANDiscriminator",
    "PriorTransformer",
    "ResidualBlock",
    "ResidualStack",
    "SigmoidEncoder",
    "check_network",
    "default_networks",
    "mlp",
]
