"""The work behind the routes: each function takes a session (or the app context) and the caller, filters by
the caller's tenant, and raises `api.errors` exceptions whose messages say what to fix."""
