"""Subcommands of the `featurescope` CLI beyond the core pipeline, one module per area; each has `register(sub)`."""
