"""Every side effect, one module per external system or aggregate."""
