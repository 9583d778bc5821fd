"""The paper's model zoo: ImageNet and CIFAR ResNets, their plain counterparts, shortcut options A/B/C.

    from pipeline.models import build, build_model, list_models
    net = build("resnet50")                 # the paper's ResNet-50 (option B, stride on the 1x1)
    net = build_model(cfg.model)            # from a config's `model` section
"""

from pipeline.models.registry import REGISTRY, ModelSpec, build, build_model, get_spec, list_models

__all__ = ["REGISTRY", "ModelSpec", "build", "build_model", "get_spec", "list_models"]
