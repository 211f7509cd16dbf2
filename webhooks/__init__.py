"""Outbound webhooks: signing (Standard Webhooks), secrets at rest, SSRF checks, the dispatcher, a dev receiver."""
