"""Retrospective audit: query a PACS, retrieve series into qcd, report EARL harmonisation."""
