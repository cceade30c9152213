"""Compatibility: lint now lives in ``circuitforge_core.db.migrations.lint``."""

from .migrations.lint import REPLAY_STATEMENT_BUDGET, LintFinding, Severity, lint_migrations

__all__ = ["REPLAY_STATEMENT_BUDGET", "LintFinding", "Severity", "lint_migrations"]
