"""Left-atrium segmentation on cardiac MR: mask (for a SEG), LA volume, LAVI and its band."""
