"""The ``pbs`` adapter: PBS/Torque and OpenPBS (seeds 001 and 002's scheduler), tested against
recorded outputs of the real commands — no PBS server can be installed here."""
