"""Ray's "Tips for first-time users": delay ray.get(), avoid tiny tasks, avoid
passing the same large object repeatedly, pipeline data processing with ray.wait().

The page's programs run one after the other in one process, so ray.init runs once.
"""

import random
import time

import numpy as np

import arca as ray

ray.init(num_cpus=4)  # Specify this system has 4 CPUs.


# Tip 1: Delay ray.get()


def do_some_work(x):
    time.sleep(1)  # Replace this with work you need to do.
    return x


start = time.time()
results = [do_some_work(x) for x in range(4)]
print("duration =", time.time() - start)
print("results = ", results)


@ray.remote
def do_some_work(x):  # noqa: F811 (each program of the page redefines it)
    time.sleep(1)  # Replace this with work you need to do.
    return x


start = time.time()
results = [do_some_work.remote(x) for x in range(4)]
print("duration =", time.time() - start)
print("results = ", results)

start = time.time()
results = [ray.get(do_some_work.remote(x)) for x in range(4)]
print("duration =", time.time() - start)
print("results = ", results)

start = time.time()
results = ray.get([do_some_work.remote(x) for x in range(4)])
print("duration =", time.time() - start)
print("results = ", results)


# Tip 2: Avoid tiny tasks
#
# Ray's page runs 100,000 tiny tasks (and 100 mega_work tasks of 1000 calls each).
# Here one ray.get() on 100,000 pending tiny tasks takes minutes (it slows down
# quadratically with the list's length), so every variant makes 10,000 calls:
# 10,000 tiny tasks, 10 mega_work tasks of 1000.
NUM_TINY = 10_000


def tiny_work(x):
    time.sleep(0.0001)  # Replace this with work you need to do.
    return x


start = time.time()
results = [tiny_work(x) for x in range(NUM_TINY)]
print("duration =", time.time() - start)


@ray.remote
def tiny_work(x):  # noqa: F811
    time.sleep(0.0001)  # Replace this with work you need to do.
    return x


start = time.time()
result_ids = [tiny_work.remote(x) for x in range(NUM_TINY)]
results = ray.get(result_ids)
print("duration =", time.time() - start)


def tiny_work(x):  # noqa: F811
    time.sleep(0.0001)  # replace this is with work you need to do
    return x


@ray.remote
def mega_work(start, end):
    return [tiny_work(x) for x in range(start, end)]


start = time.time()
result_ids = []
[result_ids.append(mega_work.remote(x * 1000, (x + 1) * 1000)) for x in range(NUM_TINY // 1000)]
results = ray.get(result_ids)
print("duration =", time.time() - start)


@ray.remote
def no_work(x):
    return x


start = time.time()
num_calls = 1000
[ray.get(no_work.remote(x)) for x in range(num_calls)]
print("per task overhead (ms) =", (time.time() - start) * 1000 / num_calls)


# Tip 3: Avoid passing same object repeatedly to remote tasks


@ray.remote
def no_work(a):  # noqa: F811
    return


start = time.time()
a = np.zeros((5000, 5000))
result_ids = [no_work.remote(a) for x in range(10)]
results = ray.get(result_ids)
print("duration =", time.time() - start)

start = time.time()
a_id = ray.put(np.zeros((5000, 5000)))
result_ids = [no_work.remote(a_id) for x in range(10)]
results = ray.get(result_ids)
print("duration =", time.time() - start)


# Tip 4: Pipeline data processing


@ray.remote
def do_some_work(x):  # noqa: F811
    time.sleep(random.uniform(0, 4))  # Replace this with work you need to do.
    return x


def process_results(results):
    sum = 0
    for x in results:
        time.sleep(1)  # Replace this with some processing code.
        sum += x
    return sum


start = time.time()
data_list = ray.get([do_some_work.remote(x) for x in range(4)])
sum = process_results(data_list)
print("duration =", time.time() - start, "\nresult = ", sum)


def process_incremental(sum, result):
    time.sleep(1)  # Replace this with some processing code.
    return sum + result


start = time.time()
result_ids = [do_some_work.remote(x) for x in range(4)]
sum = 0
while len(result_ids):
    done_id, result_ids = ray.wait(result_ids)
    sum = process_incremental(sum, ray.get(done_id[0]))
print("duration =", time.time() - start, "\nresult = ", sum)
