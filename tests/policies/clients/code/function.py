"""A seed-style policy that asks the injected clients and keeps a counter in context."""


class AIOSv1PolicyRule:
    def __init__(self, rule_id, settings, parameters):
        self.rule_id = rule_id
        self.settings = settings
        self.parameters = parameters

    def eval(self, parameters, input_data, context):
        cluster_id = input_data["inputs"]["cluster_id"]
        ok, doc = self.settings["cluster_client"].read_cluster(cluster_id)
        missing_ok, missing = self.settings["cluster_client"].read_cluster("nope")
        qok, docs = self.settings["cluster_client"].execute_query({"variable": "id"})
        metrics = self.settings["cluster_metrics_client"].get_cluster(cluster_id)
        try:
            self.settings["cluster_metrics_client"].get_cluster("nope")
            lookup = "no error"
        except LookupError as exc:
            lookup = f"LookupError: {exc}"
        everything = self.settings["cluster_metrics_client"].query_clusters()
        context["calls"] = context.get("calls", 0) + 1
        return {
            "cluster_id": doc["id"],
            "read_ok": ok,
            "missing": [missing_ok, missing],
            "query": [qok, [d["id"] for d in docs]],
            "free": metrics["nodes"][0]["gpus"][0]["freeMem"],
            "lookup": lookup,
            "all_metrics": [m["clusterId"] for m in everything],
            "rule_id": self.rule_id,
        }

    def management(self, action, data):
        if action == "get_state":
            return {"status": "success", "rule_id": self.rule_id, "echo": data}
        return {"status": "error", "message": f"Unknown action '{action}'"}
