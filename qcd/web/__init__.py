"""HTTP side of qcd: metrics and health endpoints, the dashboard and its JSON API."""
