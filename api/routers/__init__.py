"""One router per resource; each is mounted by `api.app.create_app`."""
