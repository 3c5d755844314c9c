"""Use cases: each service owns its transactions, applies the rules and raises OpenFTError."""
