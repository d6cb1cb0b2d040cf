"""Tests of the production topology (replicas behind nginx, PgBouncer, TLS); run by deploy/topology-check.sh."""
