"""ClickHouse access (embedded chdb or a server), rows as columns, numbered migrations rendered into DDL."""
