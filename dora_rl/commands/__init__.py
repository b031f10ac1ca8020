"""CLI subcommands, one module per concern; each exports `add_commands(subparsers)`."""
