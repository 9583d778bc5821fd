"""Data loaders over `data_prep`'s WebDataset shards: DALI (GPU or CPU), pure PyTorch, or synthetic.

    loader = build_loader(cfg.data, "train", dist_info, seed=cfg.run.seed)
    for images, labels in loader: ...          # one epoch: len(loader) batches on every rank
    state = loader.state_dict()                 # plain data; into the checkpoint
    build_loader(cfg.data, "train", dist_info, state)   # yields exactly the remaining batches

Importing this package is cheap: DALI is imported only when a DALI loader is built.
"""

from pipeline.data.dataset import DatasetError
from pipeline.data.factory import build_loader, dataset_num_classes, evaluation_views

__all__ = ["build_loader", "dataset_num_classes", "evaluation_views", "DatasetError"]
