"""Model definitions hfprune ships (registered with timm so ``timm.create_model`` finds them)."""

from .cifar_resnet import CifarResNet, cifar_resnet20, cifar_resnet32, cifar_resnet44, cifar_resnet56


__all__ = ["CifarResNet", "cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56"]
