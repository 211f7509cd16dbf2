"""Tables, contracts that cross the workflow boundary, the database session helper, migrations."""
