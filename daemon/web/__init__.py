"""`stylewatch web`: the booth page, the dashboard, /metrics and the health checks."""
