"""Verifiers: PRM/ORM step scores, step aggregation and answer selection."""
