"""Key custody: split-knowledge unsealing (Shamir shares of the master key) and master-key
rotation (rekey). See the README section "Split-knowledge unsealing and rekey"."""
