"""The command-line interface: parsing and error-to-exit-code mapping only."""
