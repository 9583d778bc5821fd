"""data_prep: shard ImageNet / CIFAR / image folders into WebDataset tars with DALI indexes and a manifest.

The output directory format is documented in docs/data_format.md; `data_prep.manifest.load_manifest`
is the typed reader the training loaders use. Nothing heavy is imported here.
"""

__version__ = "0.1.0"
