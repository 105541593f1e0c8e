"""The usage service: the durable ledger of every request."""
