"""The users service: user CRUD on PostgreSQL, checking access tokens itself."""
