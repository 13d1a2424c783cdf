"""Repeated real-process runs on a busy machine (``make stress`` runs them alone). Marker ``stress``."""
