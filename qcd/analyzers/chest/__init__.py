"""Chest radiograph anomaly flags: 16 sigmoid labels on a padded, resized frontal view."""
