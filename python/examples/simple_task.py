"""Ray on Golem's simple-task.py: tasks report the IP address of the node they ran on.

From "Basic Ray tasks usage tutorial" (golemfactory/golem-ray, examples/simple-task.py).
"""

import socket
import time
from collections import Counter

import arca as ray

ray.init()

print(
    """This cluster consists of
    {} nodes in total
    {} CPU resources in total
""".format(len(ray.nodes()), ray.cluster_resources()["CPU"])
)


@ray.remote
def f():
    time.sleep(0.5)

    # Return IP address.
    return socket.gethostbyname(socket.gethostname())


# The original launches 1000 tasks; at 0.5 s each that is over four minutes on a
# 2-CPU machine, so this runs 20 of them (5 s on 2 CPUs).
object_ids = [f.remote() for _ in range(20)]
ip_addresses = ray.get(object_ids)

print("Tasks executed")
for ip_address, num_tasks in Counter(ip_addresses).items():
    print("    {} tasks on {}".format(num_tasks, ip_address))  # noqa: UP032


print(
    """This cluster consists of
    {} nodes in total
    {} CPU resources in total
""".format(len(ray.nodes()), ray.cluster_resources()["CPU"])
)
