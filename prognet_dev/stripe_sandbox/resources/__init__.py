"""One module per Stripe resource, each an APIRouter (see stripe_sandbox.app for the conventions)."""
