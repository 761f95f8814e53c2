"""Command-line experiments that reproduce the SAN paper's figures."""
