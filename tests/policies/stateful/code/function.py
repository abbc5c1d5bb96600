"""A policy whose object holds state that management changes (the seed's long-lived object)."""

import time
import uuid

WORKER = uuid.uuid4().hex  # which worker answered


class AIOSv1PolicyRule:
    def __init__(self, rule_id, settings, parameters):
        self.threshold = parameters.get("threshold", 0)

    def eval(self, parameters, input_data, context):
        time.sleep(parameters.get("sleep", 0))
        return {"threshold": self.threshold, "worker": WORKER}

    def management(self, action, data):
        if action == "update_thresholds":
            self.threshold = data["threshold"]
            return {"status": "success", "threshold": self.threshold}
        return {"status": "error", "message": f"Unknown action '{action}'"}
