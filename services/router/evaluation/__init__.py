"""Evaluation hooks: quality checks and judge models scoring answers after they are sent."""
