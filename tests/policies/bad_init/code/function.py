class AIOSv1PolicyRule:
    def __init__(self, settings):
        self.settings = settings

    def eval(self, parameters, input_data, context):
        return {}
