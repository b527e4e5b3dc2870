"""One module per spotctl subcommand."""
