"""A Guided Tour of Ray Core: Remote Tasks -- generating Fibonacci series serially
and as distributed Ray tasks (Anyscale's Ray Core tutorial notebook).

The notebook's `%%time` cells are timed here with time.time(), and the values the
cells display are printed.
"""

import os
import time

# The notebook also imports logging, math, random, pathlib.Path, typing.Tuple/List,
# numpy, pandas, pyarrow.parquet and tqdm for its later sections (pi, images, batch
# inference); this part uses none of them.
import arca as ray

if ray.is_initialized:
    ray.shutdown()
ray.init()

SEQUENCE_SIZE = 100000


# Function for local execution
def generate_fibonacci(sequence_size):
    fibonacci = []
    for i in range(0, sequence_size):
        if i < 2:
            fibonacci.append(i)
            continue
        fibonacci.append(fibonacci[i - 1] + fibonacci[i - 2])
    return len(fibonacci)


# Function for remote Ray task with just a wrapper
@ray.remote
def generate_fibonacci_distributed(sequence_size):
    return generate_fibonacci(sequence_size)


# Get the number of cores
print(os.cpu_count())


# Normal Python in a single process
def run_local(sequence_size):
    results = [generate_fibonacci(sequence_size) for _ in range(os.cpu_count())]
    return results


# Run in serial mode
start = time.time()
print(run_local(SEQUENCE_SIZE))
print(f"Wall time (serial): {time.time() - start:.2f} s")


# Distributed on a Ray cluster
def run_remote(sequence_size):
    results = ray.get(
        [generate_fibonacci_distributed.remote(sequence_size) for _ in range(os.cpu_count())]
    )
    return results


# Run as distributed Ray tasks
start = time.time()
print(run_remote(SEQUENCE_SIZE))
print(f"Wall time (distributed): {time.time() - start:.2f} s")
