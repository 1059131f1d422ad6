"""Start-up integrity checks across the key store, the audit log and its checkpoints.

Each part is trustworthy alone only up to a point: a hash chain cannot show that its tail was cut,
a key store cannot show that a key file was deleted, and a fresh audit log looks perfectly valid
next to a store full of old keys. Compared with each other (and with a witness held elsewhere)
they can, so the server compares them before it serves (logcheck.py).
"""
