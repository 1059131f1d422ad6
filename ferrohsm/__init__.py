"""FerroHSM: a software HSM with a TLS REST API, a CLI and a tamper-evident audit log."""

__version__ = "0.2.0"
