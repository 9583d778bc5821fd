"""Training side of the ResNet reproduction: config, models, data loaders, engines, the loop, reports.

Importing this package is cheap: submodules import torch, DALI, DeepSpeed or W&B only when used.
"""
