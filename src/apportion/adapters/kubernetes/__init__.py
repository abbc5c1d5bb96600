"""The ``kubernetes`` adapter: Kubernetes Jobs (seed 000's plugin example), tested against
recorded responses of a real API server — none can be installed here."""
