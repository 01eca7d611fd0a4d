"""Training-side code for the EARL analyzer: simulated PET with physics-based labels."""
