"""Jobs and queues: models, records, admission, dispatch to the adapters, read-only views."""
