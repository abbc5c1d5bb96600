"""The ``lsf`` adapter: IBM Spectrum LSF (seeds 001 and 002's scheduler), tested against
recorded outputs of the real commands — no LSF can be installed here."""
