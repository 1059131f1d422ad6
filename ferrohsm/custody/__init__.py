"""Key custody: split-knowledge unsealing (Shamir shares of the master key), master-key rotation
(rekey), and backup archives of a whole FerroHSM with their restore into an empty store. See the
README sections "Split-knowledge unsealing and rekey" and "Backup and restore"."""
