"""A policy written exactly in seed 004's style: it reads the registry through the injected
clients, keeps a counter in its context, and answers one placement."""


class AIOSv1PolicyRule:
    def __init__(self, rule_id, settings, parameters):
        self.rule_id = rule_id
        self.settings = settings
        self.parameters = parameters

    def eval(self, parameters, input_data, context):
        cluster_client = self.settings["cluster_client"]
        cluster_metrics_client = self.settings["cluster_metrics_client"]
        wanted = input_data["inputs"].get("gpus", 1)
        best = None
        for cluster_id in sorted(input_data["cluster_data"]):
            ok, cluster = cluster_client.read_cluster(cluster_id)
            if not ok:
                continue
            metrics = cluster_metrics_client.get_cluster(cluster_id)
            for node in cluster["nodes"]["nodeData"]:
                if node["gpus"]["count"] >= wanted:
                    best = best or (cluster_id, node["id"], metrics["clusterId"])
        context["calls"] = context.get("calls", 0) + 1
        if best is None:
            return {}
        return {
            "cluster_id": best[0],
            "node_id": best[1],
            "gpus": [str(i) for i in range(wanted)],
            "calls": context["calls"],
            "prefer": parameters.get("prefer"),
        }

    def management(self, action, data):
        if action == "get_state":
            return {"status": "success", "parameters": self.parameters}
        return {"status": "error", "message": f"Unknown action '{action}'"}
