class AIOSv1PolicyRule:
    def __init__(self, rule_id, settings, parameters):
        pass

    def evaluate(self, parameters, input_data, context):
        return {}
