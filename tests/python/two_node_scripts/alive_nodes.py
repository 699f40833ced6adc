"""Reports the cluster's alive nodes: IP and Ray node ID of each (the harness
polls this until node A and node B are both up)."""

import ray

from rdt_driver import connect, report

connect()
report([{"ip": n["NodeManagerAddress"], "node_id": n["NodeID"]} for n in ray.nodes() if n["Alive"]])
