# Every training process imports this package (the runner, sweep workers, the benches), so
# the allocator is tuned here, once, before the first large tensor; here rather than in the
# runner because the runner's source is part of every run's code fingerprint and this
# changes speed, not results (see malloc.py).
from .malloc import tune_malloc

tune_malloc()
