"""Data-only spec types of the plan (a leaf: pydantic only): ``base`` (strict models, the
stage config base, what a stage can need from a plan) and ``sections`` (model, data,
teacher, export, bench, gates)."""
