"""Training for the ``atrium`` analyzer: cardiac MR simulator, MSD/LASC reader, U-Net training."""
