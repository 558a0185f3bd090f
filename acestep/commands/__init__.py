"""The `acestep-trainer` commands, one module per group (see `acestep.cli`)."""
