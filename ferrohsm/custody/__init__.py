"""Key custody: backup archives of a whole FerroHSM and their restore into an empty store."""
