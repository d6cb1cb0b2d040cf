"""Tests of the compose stack scaled behind its nginx `proxy`; run by deploy/compose-check.sh."""
