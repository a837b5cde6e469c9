"""Four parallel square tasks, from "Using Python Ray Tasks to distribute your
functions on multiple machines".

The tutorial connects to a two-machine cluster started with `ray start`
(`ray.init(address='auto')`); here it runs on one machine with `ray.init()`.
"""

import arca as ray

ray.init()  # The tutorial: ray.init(address='auto') to connect to the existing cluster


# Define the square task.
@ray.remote(num_cpus=1)  # Assuming each node has the same number of CPUs
def square(x):
    return x * x


# Launch four parallel square tasks.
futures = [square.remote(i) for i in range(4)]

# Retrieve results.
print(ray.get(futures))
# -> [0, 1, 4, 9]

ray.shutdown()
