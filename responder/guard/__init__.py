"""`responder guard`: always on, one leader among replicas (the writer Lease), health and metrics."""
