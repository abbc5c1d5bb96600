"""Jobs and queues: models, records, admission, the lifecycle, the backend driver, read-only views."""
