"""The public routes, one module per API family."""
