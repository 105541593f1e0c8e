"""Provider adapters: one module per wire protocol, one interface."""
