"""Convolution stacks, built from dynamic-network-architectures' blocks."""
from __future__ import annotations

from typing import Type

from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from torch import nn

from nnunetv2_uc.architectures.building_blocks.fast_layers import FastInstanceNorm3d


def conv_norm_act_stack(
    conv_op: Type[nn.Module],
    input_channels: int,
    output_channels: int,
    norm_op: Type[nn.Module],
    norm_op_kwargs: dict,
    nonlin: Type[nn.Module],
    nonlin_kwargs: dict,
    num_convs: int = 2,
) -> StackedConvBlocks:
    """``num_convs`` x (conv k3 p1 with bias -> norm -> nonlin); the first conv maps in->out."""
    return StackedConvBlocks(
        num_convs, conv_op, input_channels, output_channels, 3, 1, conv_bias=True,
        norm_op=norm_op, norm_op_kwargs=norm_op_kwargs, nonlin=nonlin, nonlin_kwargs=nonlin_kwargs,
    )


def residual_block_3d(input_channels: int, output_channels: int) -> BasicBlockD:
    """MONAI ``UnetResBlock`` semantics: conv3-IN-LReLU(0.01)-conv3-IN, 1x1 conv+IN shortcut if in != out, add, LReLU.

    Convolutions have no bias; InstanceNorm has no affine parameters.
    """
    return BasicBlockD(
        nn.Conv3d, input_channels, output_channels, kernel_size=3, stride=1, conv_bias=False,
        norm_op=FastInstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": False},
        nonlin=nn.LeakyReLU, nonlin_kwargs={"negative_slope": 0.01, "inplace": True},
    )
