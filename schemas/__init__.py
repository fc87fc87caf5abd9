"""Pydantic models for records and the API, Postgres migrations, Cassandra CQL."""
