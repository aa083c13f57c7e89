"""Cohorts: Amplitude cohort syncs, membership, resolution to channel records, and the user-vs-device report."""
