"""JSON routes, one module per resource, all thin over `server.services`."""
