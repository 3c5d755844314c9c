"""Command-line composition roots: serve, api, worker, and the client commands."""
