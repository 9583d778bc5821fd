"""What a table costs before it runs: measured throughput (`bench`, written as a `profile`), the scaling model
over GPUs and nodes (`scaling`), the table's GPU-hours and wall time (`costs`), and the command (`printing`).
"""
