"""The plan: ``schema`` (the pydantic ``Plan``, its stage list a union over the registered
stages), ``parse`` (safe YAML with line numbers, ``--set``), ``messages`` (validation errors
people can act on), ``checks`` (before any weights load), ``load`` (all of it: a plan file
-> a checked ``LoadedPlan``) and ``starter`` (``compress init``)."""
