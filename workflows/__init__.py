"""Deterministic saga code only. Never import drivers (SQLModel, redis, stripe, aiosmtplib) here."""
