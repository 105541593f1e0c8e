"""Pieces every Interlock process shares: settings parsing, the gRPC server
scaffold, the error hierarchy, the clock, key hashing and the catalog cache."""
