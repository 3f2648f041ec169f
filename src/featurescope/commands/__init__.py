"""Subcommands of the `featurescope` CLI beyond the core pipeline, one module per area: the modules listed in
`featurescope.cli.COMMAND_MODULES` each have `register(sub)`; `suite` and `train_family` are helpers of the core
`eval --suite` and `train` (a family) commands."""
