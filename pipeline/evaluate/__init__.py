"""Evaluating a trained run with the paper's protocols: `python -m pipeline.evaluate RUN_DIR` (`__main__`), the
job on every rank (`job`), exact top-1/top-5 counts over the views of each protocol (`protocols`), Fig. 7's
layer responses (`layer_responses`) and the progress line (`progress`).
"""
