"""Results leaving qcd: DICOM objects and their durable delivery to PACS."""
