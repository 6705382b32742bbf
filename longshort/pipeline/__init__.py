"""`longshort pipeline`: every stage of Long⊗Short in one run directory, cached per stage, and the report card."""
