"""qcd: a DICOM-native quality-control daemon that sits beside a PACS."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
