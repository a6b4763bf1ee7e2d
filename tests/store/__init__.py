"""Tests of linksvc.store: the database, migrations, partitions and failover."""
