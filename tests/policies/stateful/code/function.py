"""A policy whose object holds state that management changes (the seed's long-lived object)."""

import os
import time


class AIOSv1PolicyRule:
    def __init__(self, rule_id, settings, parameters):
        self.threshold = parameters.get("threshold", 0)

    def eval(self, parameters, input_data, context):
        time.sleep(parameters.get("sleep", 0))
        return {"threshold": self.threshold, "pid": os.getpid()}

    def management(self, action, data):
        if action == "update_thresholds":
            self.threshold = data["threshold"]
            return {"status": "success", "threshold": self.threshold}
        return {"status": "error", "message": f"Unknown action '{action}'"}
