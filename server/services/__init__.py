"""The lab's logic, below the HTTP layer: routes call these and map their errors to status codes."""
