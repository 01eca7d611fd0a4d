"""Simulation, training, real-data reading and demo series for the ``motion`` analyzer."""
