"""An example custom policy in the seed-004 format.

It reads live metrics through the injected ``cluster_metrics_client``, picks the node
whose GPUs have the lowest mean CUDA utilisation (below ``max_utilization``), and
takes the first ``gpus`` GPU indices there. ``management("deny_node", {"node_id": …})``
adds a node to a deny-list the policy keeps in its own state.

Upload it:  apportion policies push examples/policies/least_loaded   (or POST /policies)
"""


class AIOSv1PolicyRule:
    def __init__(self, rule_id, settings, parameters):
        self.rule_id = rule_id
        self.settings = settings
        self.parameters = parameters
        self.denied = set(parameters.get("denied_nodes", []))

    def eval(self, parameters, input_data, context):
        wanted = int(input_data["inputs"].get("gpus", 1))
        limit = float(parameters.get("max_utilization", 90))
        denied = self.denied | set(context.get("denied_nodes", []))
        metrics_client = self.settings["cluster_metrics_client"]
        best = None
        for cluster_id, entry in sorted(input_data["cluster_data"].items()):
            try:
                metrics = metrics_client.get_cluster(cluster_id)
            except Exception:
                metrics = entry.get("cluster_metrics") or {}
            util_by_node = {}
            for node_metrics in metrics.get("nodes", []):
                gpus = node_metrics.get("gpus", [])
                if gpus:
                    util_by_node[node_metrics["id"]] = sum(
                        g.get("cudaUtilization", 0) for g in gpus
                    ) / len(gpus)
            for node in entry["data"]["nodes"]["nodeData"]:
                if node["id"] in denied or node["gpus"]["count"] < wanted:
                    continue
                util = util_by_node.get(node["id"], 0.0)
                if util > limit:
                    continue
                key = (util, cluster_id, node["id"])
                if best is None or key < best:
                    best = key
        context["evaluations"] = context.get("evaluations", 0) + 1
        if best is None:
            return {}
        return {"cluster_id": best[1], "node_id": best[2], "gpus": [str(i) for i in range(wanted)]}

    def management(self, action, data):
        if action == "deny_node":
            self.denied.add(data["node_id"])
            return {"status": "success", "denied_nodes": sorted(self.denied)}
        if action == "get_state":
            return {
                "status": "success",
                "parameters": self.parameters,
                "denied_nodes": sorted(self.denied),
            }
        return {"status": "error", "message": f"Unknown action '{action}'"}
