"""DICOM ingest: association policy, C-ECHO/C-STORE handling, header checks."""
