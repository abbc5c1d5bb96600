"""Pure decision logic: the typed values of a decision, requests, the placement kernel with its
recorded filter steps, explanations and output validation. No I/O."""
