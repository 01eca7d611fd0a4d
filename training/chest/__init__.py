"""Training-side code for the chest analyzer: simulated radiographs, real-data readers."""
