"""The performance benchmarks (``python -m benchmarks``, ``nox -s bench``).

Every comparison is made within one run, alternating the competitors
(a b c a b c ...), because the machines we measure on are shared and their
speed drifts from minute to minute: figures from different runs are not
comparable, ratios from one run are. Benchmarks report; they never gate, so
a missed target prints FAIL but does not change the exit status.

Modules, one per topic:

``throughput``  seconds per epoch of aecore's training path against a plain
                PyTorch loop and the classic torchvision DataLoader loop
``inference``   ``ae encode``'s path against a bare ``inference_mode`` forward pass
``startup``     wall time of ``ae`` commands against ``import torch``
``memory``      peak RSS of training, in fresh processes, against the data's uint8 size
``runner``      the whole run: machine record, sections, JSON file
``report``      the Rich tables
``stats``       medians, ratios and targets shared by the sections
"""

from benchmarks.runner import BenchSettings, run_bench

__all__ = ["BenchSettings", "run_bench"]
