"""Plain ``nn.Module`` networks: usable without Lightning."""

from lightning_ae.nets.conv import ConvDecoder, ConvEncoder, ResidualBlock, ResidualStack
from lightning_ae.nets.mlp import MLPDecoder, MLPEncoder, mlp

__all__ = ["ConvDecoder", "ConvEncoder", "MLPDecoder", "MLPEncoder", "ResidualBlock", "ResidualStack", "mlp"]
