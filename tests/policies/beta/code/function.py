import helper


class AIOSv1PolicyRule:
    def __init__(self, rule_id, settings, parameters):
        pass

    def eval(self, parameters, input_data, context=None, *, verbose=False):
        return {"name": NAME, "helper": helper.WHO}


NAME = "beta"
