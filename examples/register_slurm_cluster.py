"""Register a Slurm cluster: Apportion discovers its nodes and GPUs from Slurm itself.

Usage:
    APPORTION_URL=... APPORTION_API_KEY=<admin key> \
        python examples/register_slurm_cluster.py [cluster-id] [partition]

Sends a cluster document with `config.scheduler.type = "slurm"` and no nodes (CONTRACTS §4);
the server asks `scontrol`/`sinfo` for the partition's nodes. Then creates a queue that runs
its jobs there and prints the discovered nodes.
"""

import sys

from apportion.clients import Apportion, ConflictError

cluster_id = sys.argv[1] if len(sys.argv) > 1 else "hpc"
partition = sys.argv[2] if len(sys.argv) > 2 else "gpu"

with Apportion() as client:
    document = {
        "id": cluster_id,
        "config": {"scheduler": {"type": "slurm", "partition": partition}},
    }
    cluster = client.register_cluster(document, replace=True)
    print(f"registered {cluster.id}: {len(cluster.node_list())} nodes from partition {partition}")
    for node in cluster.node_list():
        gpus = node.get("gpus") or {}
        print(
            f"  {node['id']}: {gpus.get('count', 0)} GPUs {','.join(gpus.get('modelNames') or [])}"
        )
    try:
        client.create_queue({"name": cluster_id, "plugin": "slurm", "clusters": [cluster_id]})
        print(f"created queue {cluster_id}")
    except ConflictError:
        print(f"queue {cluster_id} exists")
