"""The auth service: checks credentials and issues access and refresh tokens."""
