"""Ray Core Walkthrough: remote functions (tasks), object refs, resources,
multiple returns, cancellation, ray.put/get/wait and remote classes (actors).

The page elides the decorators and some function bodies; they are filled in as
in Ray's walkthrough.
"""

import time

import arca as ray

# Start Ray. If you're connecting to an existing cluster, you would use
# ray.init(address=<cluster-address>) instead.
#
# The page's own example of overriding the detected resources (section
# "Specifying required resources"), used here so that the four 10 s
# slow_function tasks leave room for the rest of the walkthrough.
ray.init(num_cpus=8, num_gpus=4, resources={"Custom": 2})


# Remote functions (Tasks)


# A regular Python function.
def my_function():
    return 1


# By adding the `@ray.remote` decorator, a regular Python function
# becomes a Ray remote function.
@ray.remote
def my_function():  # noqa: F811 (the walkthrough redefines it)
    return 1


# To invoke this remote function, use the `remote` method.
# This will immediately return an object ref (a future) and then create
# a task that will be executed on a worker process.
obj_ref = my_function.remote()

# The result can be retrieved with ``ray.get``.
assert ray.get(obj_ref) == 1


@ray.remote
def slow_function():
    time.sleep(10)
    return 1


# Invocations of Ray remote functions happen in parallel.
# All computation is performed in the background, driven by Ray's internal event loop.
for _ in range(4):
    # This doesn't block.
    slow_function.remote()


# Passing object refs to remote functions


@ray.remote
def function_with_an_argument(value):
    return value + 1


obj_ref1 = my_function.remote()
assert ray.get(obj_ref1) == 1

# You can pass an object ref as an argument to another Ray remote function.
obj_ref2 = function_with_an_argument.remote(obj_ref1)
assert ray.get(obj_ref2) == 2


# Specifying required resources


# Specify required resources.
@ray.remote(num_cpus=4, num_gpus=2)
def my_function():  # noqa: F811
    return 1


# Ray also supports fractional resource requirements.
@ray.remote(num_gpus=0.5)
def h():
    return 1


# Ray support custom resources too.
@ray.remote(resources={"Custom": 1})
def f():
    return 1


# Multiple returns


@ray.remote(num_returns=3)
def return_multiple():
    return 1, 2, 3


a, b, c = return_multiple.remote()


# Cancelling tasks


@ray.remote
def blocking_operation():
    time.sleep(10e6)


obj_ref = blocking_operation.remote()
ray.cancel(obj_ref)

from arca.exceptions import TaskCancelledError  # noqa: E402

try:
    ray.get(obj_ref)
except TaskCancelledError:
    print("Object reference was cancelled.")


# Objects in Ray

# Put an object in Ray's object store.
y = 1
object_ref = ray.put(y)


# Fetching Results

# Get the value of one object ref.
obj_ref = ray.put(1)
assert ray.get(obj_ref) == 1

# Get the values of multiple object refs in parallel.
assert ray.get([ray.put(i) for i in range(3)]) == [0, 1, 2]

# You can also set a timeout to return early from a ``get`` that's blocking for too long.
from arca.exceptions import GetTimeoutError  # noqa: E402


@ray.remote
def long_running_function():
    time.sleep(8)


obj_ref = long_running_function.remote()
try:
    ray.get(obj_ref, timeout=4)
except GetTimeoutError:
    print("`get` timed out.")

# The page does not say which tasks `object_refs` holds; these are a few of the
# walkthrough's own tasks.
object_refs = [function_with_an_argument.remote(i) for i in range(3)]
ready_refs, remaining_refs = ray.wait(object_refs, num_returns=1, timeout=None)
print(len(ready_refs), len(remaining_refs))


# Remote Classes (Actors)


@ray.remote
class Counter(object):  # noqa: UP004 (as on the page)
    def __init__(self):
        self.value = 0

    def increment(self):
        self.value += 1
        return self.value


# Create an actor from this class.
counter = Counter.remote()


# Specify required resources for an actor.
@ray.remote(num_cpus=2, num_gpus=0.5)
class Actor(object):  # noqa: UP004
    pass


# Call the actor.
obj_ref = counter.increment.remote()
assert ray.get(obj_ref) == 1

# Create ten Counter actors.
counters = [Counter.remote() for _ in range(10)]

# Increment each Counter once and get the results. These tasks all happen in
# parallel.
results = ray.get([c.increment.remote() for c in counters])
print(results)  # prints [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]

# Increment the first Counter five times. These tasks are executed serially
# and share state.
results = ray.get([counters[0].increment.remote() for _ in range(5)])
print(results)  # prints [2, 3, 4, 5, 6]
