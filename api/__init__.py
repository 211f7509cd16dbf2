"""The HTTP layer: authenticates callers, starts and signals workflows, answers questions about them."""
