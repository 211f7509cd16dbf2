"""Cross-cutting home: settings, the `prognet` CLI, the embedded dev stack, telemetry."""
