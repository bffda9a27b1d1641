"""Running a plan: ``runner`` (load -> stages -> export -> bench -> report -> gates),
``context`` (the run context the stages see through ``stages.context.StageContext``),
``lock`` (one run per output folder), ``state`` (resume), ``environment`` (device, the
environment the report records)."""
