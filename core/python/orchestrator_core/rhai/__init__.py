"""Rhai scheduling policies: the embedded engine (:mod:`orchestrator_core.rhai.engine`)."""
