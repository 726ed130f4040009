"""Evaluation: the paper's tasks (tasks.py, mbpp.py), likelihood (likelihood.py), diversity
(diversity.py), the benchmark (bench.py) and the demo (demo.py).

The names below are what ``fastblt bench``'s flags need; they live here, torch-free, so that
``fastblt bench --help`` does not import torch.
"""

TASKS = ("humaneval", "mbpp", "translation_fr", "translation_de", "code", "prose")  # `fastblt bench --tasks`
BENCH_SCHEDULES = ("fused", "paper", "both")  # `fastblt bench --schedule`: BLT-S / BLT-DV rows
PARTIAL = "results.partial.jsonl"  # an interrupted bench run's results, resumed by the same command
