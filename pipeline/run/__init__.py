"""A run directory and what lives in it: one owner at a time (`lock`), where the run stands (`state`), what
training and evaluation leave for the report (`results`), the run logger (`logger`: console, `metrics.jsonl`,
W&B through `wandb_run`).
"""
