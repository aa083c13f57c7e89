"""The operator dashboard at /dashboard: server-rendered pages over the same services the API reads
(delivery stats, the cohort report, the platform sync), behind a login with ADMIN_TOKEN."""
