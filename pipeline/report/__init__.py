"""The paper's tables beside this project's runs: `python -m pipeline.report TABLE.yaml` (`__main__`), what the
runs recorded (`reading`), the Markdown (`markdown`), the figures (`figures`), the W&B table (`wandb_table`),
and all of it written for one table (`write`).
"""
