"""The pytest glue of pplgate: options, collection, the gate session and xdist hooks (thin; hands off)."""
