"""The only package that imports fastapi: the app factory, one router per resource, auth, the server."""
