"""HTTP side of qcd: metrics and health endpoints (the dashboard comes later)."""
