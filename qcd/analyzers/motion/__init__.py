"""HR-pQCT motion grading (Whittier 2020 scale 1-5) with a rescan recommendation."""
