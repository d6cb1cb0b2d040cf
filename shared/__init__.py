"""Code both services import: settings, database, models, passwords, tokens, errors.

This package never imports auth_service or users_service.
"""
