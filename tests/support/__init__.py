"""Shared helpers for the autoreg test suite (see ``netlab`` for the isolated network lab)."""
