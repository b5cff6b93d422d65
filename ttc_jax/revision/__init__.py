"""Revisions (Snell et al. 2024, Sec. 6): revision trajectories for SFT and test-time chains."""
