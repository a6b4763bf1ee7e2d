"""The database: the schema and engines, the SQLite write lock, transactions and the
hot per-thread connections (``db``), running the Alembic migrations at start-up
(``migrate``), and the monthly partitions of the ledger on PostgreSQL (``partitions``).
It imports nothing else of linksvc's but the configuration and the errors.
"""
