"""Training one run of the paper: `python -m pipeline.train CONFIG [overrides]` (`__main__`), the loop and what
it sets up (`loop`), and the learning rate as a pure function of the step (`schedule`).
"""
