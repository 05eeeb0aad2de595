"""HTTP layer: JSON routes under /api/v1 and the dashboard pages."""
