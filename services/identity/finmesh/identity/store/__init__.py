"""Identity's tables (schema.py) and the queries on each: personal data only ever encrypted or keyed-hashed."""
